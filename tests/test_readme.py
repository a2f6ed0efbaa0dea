"""What README names is what the code does: the files beside a checkpoint,
the keys of the exported metadata and of /predict's answer, serve's routes,
the commands; the flag reference itself is generated (test_tables.py)."""

import os
import re

import torch

from conftest import REPO
from mnist_hogwild.commands import export, flags
from mnist_hogwild.serving import holder
from mnist_hogwild.training import beside

with open(os.path.join(REPO, "README.md")) as f:
    README = f.read()
FLAT = " ".join(README.split())


def test_readme_names_every_file_a_run_writes_beside_its_checkpoint():
    path = "model_checkpoint.pth"
    names = [os.path.basename(p) for p in beside.run_files(path)]
    names += [f"{beside.models(path)}/", f"{beside.tensorboard(path)}/"]
    missing = [n for n in names if f"`{n}`" not in FLAT and not n.endswith(beside.OLDER_LAYOUT)]
    assert not missing


def test_the_exported_metadata_has_the_keys_readme_lists():
    listed = re.search(r"# dataset, classes, mean, std, epoch, accuracy_percent", README)
    assert listed, "README's export example lists the metadata's keys"
    state = {"config": {"dataset": "mnist"}, "epoch": 3}
    state["metrics"] = [{"accuracy_percent": 98.123456}]
    meta = export.metadata(state)
    keys = [k.strip() for k in listed.group(0).removeprefix("#").split(",")]
    assert set(keys) <= set(meta) and meta["accuracy_percent"] == 98.12


def test_predicts_answer_is_the_one_readme_shows():
    shown = re.search(r"# (\{\"digit\": 7, .*\})", README).group(1)
    keys = re.findall(r'"(\w+)":', shown)
    probabilities = torch.full((10,), 0.01).index_fill_(0, torch.tensor([7]), 0.91)
    said = holder.answer(probabilities, bytes(784), {"config": {"dataset": "mnist"}, "epoch": 1})
    assert list(said) == keys and (said["digit"], said["name"]) == (7, "7")


def test_readme_shows_every_command_and_serves_routes():
    for name in flags.COMMANDS:
        assert f"`{name}`" in FLAT or f" {name} " in FLAT, name
    for route in ("/predict", "/healthz", "?input=1"):
        assert route in FLAT, route
