"""The real MNIST, trained with the defaults: the course's promises."""

import json

import pytest

from conftest import run_trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, mnist_dir):
    """One run with every default (2 processes, 10 epochs): its metrics rows."""
    cwd = tmp_path_factory.mktemp("mnist")
    proc = run_trainer("--data-dir", mnist_dir, "--log-interval", "1000", cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr
    with open(cwd / "model_checkpoint.metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    print("MNIST accuracy per epoch:", [round(r["accuracy_percent"], 2) for r in rows])
    return rows


def test_one_epoch_at_two_processes_reaches_93_percent(default_run):
    assert default_run[0]["accuracy_percent"] >= 93


def test_the_default_epochs_reach_98_percent(default_run):
    assert len(default_run) == 10
    assert default_run[-1]["accuracy_percent"] >= 98
