"""The validation split (--validation-size): held-out training images that
decide (the best model, --target-accuracy, the collapse checks), the same for
every seed, never trained on; the test set only reported."""

import shutil

import pytest
import torch
from conftest import load_checkpoint, run_trainer

from mnist_hogwild.core import loglines
from mnist_hogwild.core.errors import DataError
from mnist_hogwild.learn import data
from mnist_hogwild.learn.schedule import epoch_samples


def test_the_held_out_images_are_fixed_disjoint_and_never_in_an_epoch():
    trained, held = data.hold_out(60000, 5000)
    again, held_again = data.hold_out(60000, 5000)
    assert torch.equal(held, held_again) and len(held) == 5000 and len(trained) == 55000
    assert not set(held.tolist()) & set(trained.tolist())
    for seed in (1, 2, 12345):  # every seed trains on the same images, in its own order
        for epoch in (0, 3):
            order = epoch_samples(seed, epoch, trained)
            assert torch.equal(order.sort().values, trained)
    assert not torch.equal(epoch_samples(1, 0, trained), epoch_samples(2, 0, trained))
    everything, none = data.hold_out(100, 0)  # the sample's behaviour: nothing held out
    assert torch.equal(everything, torch.arange(100)) and len(none) == 0
    with pytest.raises(DataError, match="leaves no training images"):
        data.hold_out(100, 100)


def shuffled_test_labels(data_dir, root):
    """A scratch copy of DATA_DIR whose test labels are shuffled (the images kept)."""
    copy = root / "shuffled"
    shutil.copytree(data_dir, copy)
    labels = copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    payload = bytearray(labels.read_bytes())
    mixed = torch.tensor(list(payload[8:]))[torch.randperm(len(payload) - 8)]
    payload[8:] = bytes(((mixed + 3) % 10).tolist())  # (and moved off their own class)
    labels.write_bytes(bytes(payload))
    return copy


def run(data_dir, cwd, *flags):
    # (--log-interval past the epoch: the target is judged at epochs' ends
    # only, where a run stops at the same batch whatever the timing.)
    flags = ("--log-interval", "1000", *flags)
    cwd.mkdir()
    proc = run_trainer("--data-dir", data_dir, "--num-processes", "1", "--epochs", "3",
                       "--target-accuracy", "60", "--checkpoint", "m.pth", *flags, cwd=cwd)  # fmt: skip
    if "--validation-size 0" in " ".join(flags):
        return proc
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(cwd / "m.best.pth")
    chosen = (state["epoch"], [t.sum().item() for t in state["model_state"].values()])
    return proc.stdout, chosen, len(loglines.parse_lines("epoch", proc.stdout))


@pytest.mark.slow
def test_decisions_do_not_change_when_the_test_labels_do(data_dir, tmp_path):
    shuffled = shuffled_test_labels(data_dir, tmp_path)
    out, chosen, epochs = run(data_dir, tmp_path / "a", "--validation-size", "500")
    out_s, chosen_s, epochs_s = run(shuffled, tmp_path / "b", "--validation-size", "500")
    assert "reached --target-accuracy 60.00%" in out  # the premise: a decision was made
    assert (chosen, epochs) == (chosen_s, epochs_s)  # the same stop, the same best model
    (line,) = [p for p in loglines.parse_lines("epoch", out_s)][-1:]
    assert float(line["accuracy"]) < 30 and line["validation"].endswith("%")  # test only reported
    # The premise of the check: deciding on the test set (--validation-size 0),
    # the same change turns the target stop into a collapse (chance on the test set).
    plain = run(data_dir, tmp_path / "c", "--validation-size", "0")
    plain_s = run(shuffled, tmp_path / "d", "--validation-size", "0")
    assert plain.returncode == 0 and "reached --target-accuracy" in plain.stdout, plain.stderr
    assert plain_s.returncode == 1 and "the model collapsed" in plain_s.stderr


@pytest.mark.slow
def test_an_old_checkpoint_resumes_with_nothing_held_out(data_dir, tmp_path):
    proc = run_trainer(
        "--data-dir", data_dir, "--epochs", "1", "--checkpoint", "m.pth", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(tmp_path / "m.pth")
    del state["config"]["validation_size"]  # as versions before the split wrote it
    state["metrics"] = [
        {k: v for k, v in r.items() if "validation" not in k} for r in state["metrics"]
    ]
    state["step"], state["epoch"] = 0, 1
    state["batches_per_epoch"] = 40  # (2,560 images, none held out)
    torch.save(state, tmp_path / "old.pth")
    proc = run_trainer("--data-dir", data_dir, "--epochs", "2", "--resume", "--checkpoint", "old.pth",
                       cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (start,) = loglines.parse_lines("training", proc.stdout)
    assert start["decides"].startswith("the test set (--validation-size 0")
    (epoch,) = loglines.parse_lines("epoch", proc.stdout)
    assert epoch["validation"] == "none"
    assert load_checkpoint(tmp_path / "old.pth")["config"]["validation_size"] == 0
