"""Nothing lost, round 3: the ways a new user and a careless one lost or
misnamed models, one test each (the property over random sequences is in
test_history.py). Real files; the commands run as users type them."""

import json
import os
import shutil

import pytest
import torch
from PIL import Image, ImageDraw
from conftest import run_trainer

from mnist_hogwild.commands import output
from mnist_hogwild.serving.holder import answer
from mnist_hogwild.core.errors import CheckpointError, UsageError
from mnist_hogwild.training import beside, checkpoint, history
from mnist_hogwild.training.checkpoint_manager import CheckpointManager
from helpers import valid_state


def state_of(accuracy, dataset="mnist", validation=5000, epoch=1, run_id=None):
    rows = [{"epoch": epoch, "accuracy_percent": accuracy}]
    if validation:
        rows[0]["validation_accuracy_percent"] = accuracy
    state = valid_state(epoch=epoch, metrics=rows, run_id=run_id or checkpoint.new_run_id())
    state["config"] = {**state["config"], "dataset": dataset, "validation_size": validation}
    return state


def train(path, *states, log=None):
    """A run on PATH that saves each of STATES as an evaluated epoch."""
    said = log if log is not None else []
    m = CheckpointManager(str(path), said.append, said.append)
    m.open()
    for state in states:
        m.save_epoch(state)
    m.close()
    return said


def listing(root):
    return sorted(
        (str(p.relative_to(root)), p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in root.rglob("*")
    )


def proven(path):
    return {e.hash: e for e in history.History(str(path), print, writes=False).entries()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    work = tmp_path_factory.mktemp("trained")
    proc = run_trainer(
        "--data-dir", data_dir, "--recipe", "fast", "--checkpoint", "ck.pth", cwd=work
    )
    assert proc.returncode == 0, proc.stderr
    return work


# 1 -------------------------------------------------------------------------
@pytest.mark.parametrize("inside", ["history", "best", "metrics"])
def test_training_refuses_a_file_of_another_checkpoint_before_writing(
    trained, data_dir, tmp_path, inside
):
    work = tmp_path / "w"
    shutil.copytree(trained, work)
    (name,) = os.listdir(work / "ck.models")
    target = {
        "history": f"ck.models/{name}",
        "best": "ck.best.pth",
        "metrics": "ck.metrics.jsonl",
    }[inside]
    before = listing(work)
    proc = run_trainer("--data-dir", data_dir, "--checkpoint", target, "--epochs", "1", cwd=work)
    assert proc.returncode == 1, proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: --checkpoint {target} is ") and "train on a copy" in line
    assert listing(work) == before, "something was written"


# 2 -------------------------------------------------------------------------
def test_a_damaged_history_file_is_set_aside_and_its_model_kept_from_a_copy(tmp_path):
    path = tmp_path / "ck.pth"
    good = state_of(98.46)
    train(path, good)
    (name,) = os.listdir(tmp_path / "ck.models")
    os.truncate(tmp_path / "ck.models" / name, 100)
    said = train(path, state_of(12.0))  # a fresh run, worse
    digest = history.facts(good).hash
    kept = proven(path)
    assert digest in kept and kept[digest].accuracy == 98.46
    assert os.path.isfile(tmp_path / "ck.models" / f"{name}.damaged")
    (line,) = [s for s in said if "set aside" in s]
    folder = tmp_path / "ck.models"
    assert line.startswith(f"warning: set aside {folder}/{name} as {folder}/{name}.damaged: ")
    best = checkpoint.load(str(tmp_path / "ck.best.pth"), valid_state()["model_state"])
    assert history.weights_hash(best["model_state"]) == digest


def test_a_history_file_whose_weights_are_not_its_name_is_not_counted(tmp_path):
    path = tmp_path / "ck.pth"
    train(path, state_of(90.0))
    (name,) = os.listdir(tmp_path / "ck.models")
    impostor = name[:-12] + "0" * 8 + ".pth"  # same words, another hash
    os.rename(tmp_path / "ck.models" / name, tmp_path / "ck.models" / impostor)
    assert proven(path) == {}
    train(path, state_of(50.0))
    assert os.path.exists(tmp_path / "ck.models" / f"{impostor}.damaged")


# 3 -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["newer", "other-network", "nan"])
def test_evaluate_out_never_replaces_a_checkpoint_it_cannot_read(tmp_path, kind):
    state = valid_state()
    if kind == "newer":
        state["format_version"] = 99
    elif kind == "other-network":
        state["model_state"] = torch.nn.Linear(2, 2).state_dict()
    else:
        state["model_state"] = {k: v * float("nan") for k, v in state["model_state"].items()}
    torch.save(state, tmp_path / "x.pth")
    with pytest.raises(UsageError, match="holds a trained model"):
        output.check_output(str(tmp_path / "x.pth"), str(tmp_path / "ck.pth"))
    (tmp_path / "e.json").write_text("{}")
    output.check_output(str(tmp_path / "e.json"), str(tmp_path / "ck.pth"))  # its own output


# 4 -------------------------------------------------------------------------
def test_two_checkpoints_of_one_stem_never_share_their_files(tmp_path):
    train(tmp_path / "a.pth", state_of(98.0))
    before = listing(tmp_path)
    m = CheckpointManager(str(tmp_path / "a.pt"), print, print)
    with pytest.raises(CheckpointError, match="would share .*a.models/.* with the checkpoint"):
        m.open()
    assert listing(tmp_path) == before
    assert beside.lock(str(tmp_path / "a.pt")) == beside.lock(str(tmp_path / "a.pth"))


# 5 -------------------------------------------------------------------------
def test_the_best_is_chosen_among_models_judged_on_the_same_split(tmp_path):
    path = tmp_path / "ck.pth"
    train(path, state_of(98.90, validation=5000))
    said = train(path, state_of(100.0, validation=20))
    train(path, state_of(99.10, validation=0))
    kept = history.History(str(path), print)
    assert kept.best("mnist validation 5000").accuracy == 98.90
    assert kept.best("mnist validation 20").accuracy == 100.0
    assert kept.best("mnist test").accuracy == 99.10
    best = checkpoint.load(str(tmp_path / "ck.best.pth"), valid_state()["model_state"])
    assert history.split_of(best) == "mnist test"  # the last run's split
    assert not any("best" in s for s in said if "validation 5000" in s)


def test_a_model_never_evaluated_is_never_the_best(tmp_path):
    path = tmp_path / "ck.pth"
    checkpoint.save(valid_state(step=3), str(path))  # stopped within its first epoch
    train(path)
    (name,) = os.listdir(tmp_path / "ck.models")
    assert "_unevaluated_" in name and "acc0.00" not in name
    (entry,) = proven(path).values()
    assert not entry.comparable and history.History(str(path), print).best(entry.split) is None


# 6 -------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["evaluate", "infer", "models", "plot", "export"])
def test_a_reading_command_writes_nothing_beside_the_checkpoint(trained, data_dir, tmp_path, cmd):
    """Not even the history of a model copied in: a folder made there by
    another uid locked its owner's training out."""
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("ck.pth", "ck.metrics.jsonl"):  # copied in, without its history
        shutil.copy(trained / name, shared / name)
    out = tmp_path / "out"
    out.mkdir()
    picture = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(picture).line([(14, 4), (14, 23)], fill=255, width=3)
    picture.save(out / "one.png")
    args = {
        "evaluate": ["--data-dir", data_dir, "--out", str(out / "e.json")],
        "infer": [str(out / "one.png")],
        "models": [],
        "plot": ["--out", str(out / "p.png")],
        "export": ["--out", str(out / "m.pt2")],
    }[cmd]
    before = listing(shared)
    proc = run_trainer(cmd, *args, "--checkpoint", "ck.pth", cwd=shared)
    assert proc.returncode == (1 if cmd == "models" else 0), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert listing(shared) == before, proc.stdout + proc.stderr


# 7 -------------------------------------------------------------------------
def test_a_folder_or_a_link_named_like_a_model_is_never_read_nor_counted(tmp_path):
    path = tmp_path / "ck.pth"
    train(path, state_of(90.0))
    folder = tmp_path / "ck.models"
    (folder / "mnist_e01_acc99.99_aaaaaaaa_bbbbbbbb.pth").mkdir()
    os.symlink("/dev/zero", folder / "mnist_e02_acc99.98_aaaaaaaa_cccccccc.pth")
    said = []
    kept = history.History(str(path), said.append, writes=False)
    assert [e.accuracy for e in kept.entries()] == [90.0]
    assert len(said) == 2 and all("not counted: not a regular file" in s for s in said)
    train(path, state_of(10.0))  # training sets them aside
    assert sorted(n for n in os.listdir(folder) if "not-a-file" in n) == [
        "mnist_e01_acc99.99_aaaaaaaa_bbbbbbbb.pth.not-a-file",
        "mnist_e02_acc99.98_aaaaaaaa_cccccccc.pth.not-a-file",
    ]
    with pytest.raises(CheckpointError, match="is not a regular file"):
        checkpoint.read_file("/dev/zero")


# 8 -------------------------------------------------------------------------
def test_a_deeply_nested_metrics_line_is_skipped(tmp_path):
    path = tmp_path / "ck.pth"
    good = {"kind": "epoch", "epoch": 1, "train_loss": 1, "test_loss": 1, "accuracy_percent": 90}
    lines = ["[" * 100_000 + "]" * 100_000, json.dumps(good)]
    (tmp_path / "ck.metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert checkpoint.read_metrics(str(path)) == [{k: v for k, v in good.items() if k != "kind"}]


def test_a_sparse_tensor_in_a_checkpoint_is_refused_in_one_line(tmp_path):
    state = valid_state()
    key = next(iter(state["model_state"]))
    state["model_state"][key] = state["model_state"][key].to_sparse()
    torch.save(state, tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match="not dense floating-point tensors"):
        checkpoint.load(str(tmp_path / "s.pth"), valid_state()["model_state"])


# 9 -------------------------------------------------------------------------
def test_a_file_where_the_history_goes_is_named_before_training(data_dir, tmp_path):
    (tmp_path / "ck.models").write_text("not a folder")
    proc = run_trainer("--data-dir", data_dir, "--checkpoint", "ck.pth", cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "ck.models is a file, not the folder of models: move it away" in line
    assert sorted(os.listdir(tmp_path)) == ["ck.models"]


def test_a_run_that_keeps_no_model_leaves_no_history_folder(tmp_path):
    path = tmp_path / "ck.pth"
    m = CheckpointManager(str(path), print, print)
    m.open()
    m.save(valid_state(step=2))  # a stop within the first epoch
    m.close()
    assert not os.path.exists(tmp_path / "ck.models")


def test_the_target_line_says_stopping_early_only_when_it_is(data_dir, tmp_path):
    # (No interval rows within the epoch, so the target is judged at its end only.)
    flags = ["--epochs", "1", "--target-accuracy", "5", "--log-interval", "1000"]
    proc = run_trainer("--data-dir", data_dir, *flags, "--checkpoint", "ck.pth", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (line,) = [s for s in proc.stdout.splitlines() if "reached --target-accuracy" in s]
    assert line.endswith("the last planned epoch") and "stopping early" not in line


def test_predict_names_a_class_as_a_class_for_a_data_set_of_things():
    state = state_of(85.0, dataset="fashion-mnist")
    out = answer(torch.tensor([0.0, 0.0, 0.0, 1.0] + [0.0] * 6), b"", state)
    assert out["class"] == 3 and out["name"] == "Dress" and "digit" not in out
    assert answer(torch.eye(10)[7], b"", state_of(99.0))["digit"] == 7
