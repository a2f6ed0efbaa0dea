"""Checkpoint and resume through the real trainer."""

import pytest
import torch

from conftest import load_checkpoint, run_trainer
from harness import epoch_rows
from helpers import BAD_CHECKPOINTS, assert_same_weights

pytestmark = pytest.mark.slow
ONE = ["--num-processes", "1", "--threads-per-process", "1"]


def test_resume_after_k_epochs_is_bitwise_identical(tmp_path, data_dir):
    (tmp_path / "straight").mkdir()
    (tmp_path / "split").mkdir()
    common = ["--data-dir", data_dir, *ONE, "--seed", "7"]
    assert run_trainer(*common, "--epochs", "3", cwd=tmp_path / "straight").returncode == 0
    assert run_trainer(*common, "--epochs", "1", cwd=tmp_path / "split").returncode == 0
    first = load_checkpoint(tmp_path / "split" / "model_checkpoint.pth")
    assert (first["epoch"], first["step"]) == (1, 0)
    proc = run_trainer(*common, "--epochs", "3", "--resume", cwd=tmp_path / "split")
    assert proc.returncode == 0, proc.stderr
    a = load_checkpoint(tmp_path / "straight" / "model_checkpoint.pth")
    b = load_checkpoint(tmp_path / "split" / "model_checkpoint.pth")
    assert (b["epoch"], b["step"]) == (3, 0)
    assert_same_weights(a, b)
    assert [m["accuracy_percent"] for m in a["metrics"]] == [
        m["accuracy_percent"] for m in b["metrics"]
    ]
    assert len(epoch_rows(tmp_path / "split" / "model_checkpoint.metrics.jsonl")) == 3


@pytest.fixture
def one_epoch_at_batch_128(tmp_path, data_dir):
    """A run dir holding a finished 1-epoch checkpoint trained with --batch-size 128."""
    common = ["--data-dir", data_dir, *ONE]
    proc = run_trainer(*common, "--epochs", "1", "--batch-size", "128", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return common


def test_resume_of_a_complete_run_says_so_and_touches_nothing(tmp_path, one_epoch_at_batch_128):
    before = (tmp_path / "model_checkpoint.pth").read_bytes()
    proc = run_trainer(*one_epoch_at_batch_128, "--resume", cwd=tmp_path)
    assert proc.returncode == 0 and "already complete" in proc.stdout
    assert (tmp_path / "model_checkpoint.pth").read_bytes() == before


def test_resume_with_another_batch_size_is_refused(tmp_path, one_epoch_at_batch_128):
    # A different batch size would change what an epoch is.
    flags = ["--resume", "--epochs", "2", "--batch-size", "64"]
    proc = run_trainer(*one_epoch_at_batch_128, *flags, cwd=tmp_path)
    assert proc.returncode == 2 and "--batch-size 64 differs" in proc.stderr


def test_resume_with_more_epochs_keeps_the_checkpoints_settings(tmp_path, one_epoch_at_batch_128):
    proc = run_trainer(*one_epoch_at_batch_128, "--resume", "--epochs", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(tmp_path / "model_checkpoint.pth")
    assert state["epoch"] == 2 and state["config"]["batch_size"] == 128


def test_resume_after_an_interrupted_evaluation_evaluates_that_epoch(tmp_path, data_dir):
    """Found by the soak: a stop during the last epoch's evaluation saves
    (epoch E-1, step = batches per epoch); resuming must evaluate epoch E."""
    common = ["--data-dir", data_dir, *ONE, "--epochs", "1"]
    assert run_trainer(*common, cwd=tmp_path).returncode == 0
    path = tmp_path / "model_checkpoint.pth"
    state = load_checkpoint(path)
    state.update(epoch=0, step=state["batches_per_epoch"], metrics=[])
    torch.save(state, path)
    proc = run_trainer(*common, "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1: test loss" in proc.stdout
    final = load_checkpoint(path)
    assert (final["epoch"], final["step"], len(final["metrics"])) == (1, 0, 1)


def test_resume_without_checkpoint_warns_and_starts_fresh(tmp_path, data_dir):
    proc = run_trainer("--data-dir", data_dir, *ONE, "--epochs", "1", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no checkpoint at model_checkpoint.pth; starting fresh" in proc.stderr
    assert load_checkpoint(tmp_path / "model_checkpoint.pth")["epoch"] == 1


def test_resume_with_a_different_number_of_processes(tmp_path, data_dir):
    common = ["--data-dir", data_dir]
    assert (
        run_trainer(*common, "--epochs", "1", "--num-processes", "1", cwd=tmp_path).returncode == 0
    )
    proc = run_trainer(*common, "--epochs", "2", "--num-processes", "3", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 processes" in proc.stdout
    assert load_checkpoint(tmp_path / "model_checkpoint.pth")["epoch"] == 2


def test_dry_run_trains_one_batch_per_worker_then_checkpoints(tmp_path, data_dir):
    proc = run_trainer("--data-dir", data_dir, "--dry-run", "--num-processes", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(tmp_path / "model_checkpoint.pth")
    assert (state["epoch"], state["step"]) == (0, 2)
    assert len(state["metrics"]) == 1


@pytest.mark.parametrize(
    "make, message",
    [(m, msg) for _, m, msg in BAD_CHECKPOINTS],
    ids=[i for i, *_ in BAD_CHECKPOINTS],
)
def test_bad_checkpoint_is_refused_and_left_untouched(tmp_path, data_dir, make, message):
    path = tmp_path / "model_checkpoint.pth"
    make(path)
    before = path.read_bytes()
    proc = run_trainer("--data-dir", data_dir, "--resume", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert path.read_bytes() == before
    assert not (tmp_path / "PWNED").exists()
