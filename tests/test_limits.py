"""Sizes a reader meets, held under their limits (docs/development.md): no
function over 50 lines and no class over 200 outside tests/, the trainer
module under 400, README at most 280 lines, scripts/ at most 1,700 (the load script for serve came in at 1,583).
"""

import ast
import os

import pytest

from conftest import REPO

CODE = ["main.py", "train.py", "model.py", "mnist_hogwild", "scripts", "tools"]


def python_files():
    for top in CODE:
        path = os.path.join(REPO, top)
        if os.path.isfile(path):
            yield path
        for folder, _, names in os.walk(path):
            yield from (os.path.join(folder, n) for n in sorted(names) if n.endswith(".py"))


def lines(path):
    with open(path) as f:
        return sum(1 for _ in f)


@pytest.mark.parametrize("path", list(python_files()), ids=lambda p: os.path.relpath(p, REPO))
def test_no_function_over_50_lines_and_no_class_over_200(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    too_long = [
        f"{n.name}: {n.end_lineno - n.lineno + 1} lines"
        for n in ast.walk(tree)
        if (
            isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 50
        )
        or (isinstance(n, ast.ClassDef) and n.end_lineno - n.lineno >= 200)
    ]
    assert not too_long


def test_the_trainer_readme_and_scripts_stay_under_their_limits():
    assert lines(os.path.join(REPO, "mnist_hogwild", "training", "trainer.py")) < 400
    assert lines(os.path.join(REPO, "README.md")) <= 280
    scripts = os.path.join(REPO, "scripts")
    assert sum(lines(os.path.join(scripts, n)) for n in os.listdir(scripts)) <= 1700
