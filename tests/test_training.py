"""The real trainer with real processes and real signals."""

import os
import shutil
import signal
import time

import pytest

from mnist_hogwild.core import loglines
from mnist_hogwild.training import checkpoint
from harness import epoch_rows
from conftest import (
    FASHION,
    finish,
    load_checkpoint,
    run_trainer,
    start_trainer,
    stop_group,
    wait_for_line,
)
from helpers import assert_same_weights
from procs import handles_signal, wait_until, worker_pids

pytestmark = pytest.mark.slow
ONE = ["--num-processes", "1", "--threads-per-process", "1"]


def batches_this_run(output):
    lines = loglines.parse_lines("stopped", output) + loglines.parse_lines("done", output)
    return sum(parsed["batches"] for parsed in lines)


def test_two_worker_run_learns_and_writes_checkpoint_and_metrics(tmp_path, data_dir):
    proc = run_trainer(
        "--data-dir", data_dir, "--epochs", "2", "--num-processes", "2", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 processes" in proc.stdout
    state = load_checkpoint(tmp_path / "model_checkpoint.pth")
    assert (state["epoch"], state["step"], state["format_version"]) == (2, 0, 2)
    rows = epoch_rows(tmp_path / "model_checkpoint.metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {
        "epoch",
        "train_loss",
        "test_loss",
        "accuracy_percent",
        "lr",
        "samples_per_s",
        "seconds",
        "eval_seconds",
        "staleness",
        "staleness_p99",
        "samples",
        "validation_loss",
        "validation_accuracy_percent",
        "kind",
    }
    # Learnable synthetic data: the loss falls from chance (ln 10 = 2.30) and keeps
    # falling, and two epochs reach (nearly) every test sample (measured: 100%).
    assert rows[1]["train_loss"] < rows[0]["train_loss"] < 2.30
    assert rows[1]["test_loss"] < rows[0]["test_loss"] < 2.30
    assert rows[1]["accuracy_percent"] >= 95
    # Progress lines come from one place, not one copy per worker.
    progress = [s for s in proc.stdout.splitlines() if s.startswith("epoch 1/2 [")]
    assert len(progress) == len(set(progress)) >= 2
    # (2,560 images less the twelfth held out for validation: 37 batches of 64 an epoch)
    assert batches_this_run(proc.stdout) == 2 * state["batches_per_epoch"] == 2 * 37


def signal_mid_epoch(tmp_path, data_dir, signum, extra=(), group=False):
    proc = start_trainer(
        "--data-dir", data_dir, "--epochs", "2", "--log-interval", "20", *extra, cwd=tmp_path
    )
    try:
        wait_for_line(proc, "epoch 1/2 [")
        os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
        sent = time.monotonic()
        out, err = finish(proc)
        elapsed = time.monotonic() - sent
    finally:
        stop_group(proc)
    return proc.returncode, out, err, elapsed


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_epoch_saves_progress_and_resume_finishes(tmp_path, big_data_dir, signum):
    rc, out, err, elapsed = signal_mid_epoch(tmp_path, big_data_dir, signum)
    assert rc == 128 + signum, err
    assert elapsed < 2.0, f"took {elapsed:.2f}s to exit after the signal"
    assert "Traceback" not in err
    state = load_checkpoint(tmp_path / "model_checkpoint.pth")
    assert state["epoch"] == 0 and 0 < state["step"] < state["batches_per_epoch"]
    first = batches_this_run(out)
    assert first == state["step"]
    proc = run_trainer("--data-dir", big_data_dir, "--epochs", "2", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming model_checkpoint.pth at epoch 1, batch {state['step']}/" in proc.stdout
    final = load_checkpoint(tmp_path / "model_checkpoint.pth")
    assert (final["epoch"], final["step"]) == (2, 0)
    assert first + batches_this_run(proc.stdout) == 2 * state["batches_per_epoch"]


def blocked_data_dir(tmp_path, data_dir):
    """A copy of DATA_DIR whose training images are a FIFO: the trainer's start-up
    blocks when it opens them, until someone opens the FIFO for writing. So it
    cannot reach its first batch, however fast the machine is."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    fifo = copy / "MNIST" / "raw" / "train-images-idx3-ubyte"
    fifo.unlink()
    os.mkfifo(fifo)
    return copy, fifo


@pytest.mark.parametrize("moment", ["handler installed", "loading data"])
def test_signal_during_start_up_exits_fast_without_a_checkpoint(tmp_path, data_dir, moment):
    data, fifo = blocked_data_dir(tmp_path, data_dir)
    proc = start_trainer("--data-dir", data, "--epochs", "1", cwd=tmp_path)
    writer = None
    try:
        # The states are made to happen, not waited for with a sleep: the
        # handlers are installed first thing in main() (SIGHUP last; Python
        # itself catches SIGINT from the start, so that one tells nothing);
        # opening the FIFO for writing returns only once the trainer has
        # opened it to read the data.
        assert wait_until(lambda: handles_signal(proc.pid, signal.SIGHUP), 30), proc.poll()
        if moment == "loading data":
            writer = open(fifo, "wb")  # noqa: SIM115 - held open until the trainer exits
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = finish(proc)
        elapsed = time.monotonic() - sent
    finally:
        stop_group(proc)
        if writer is not None:
            writer.close()
    assert not loglines.parse_lines("ready", out), "premise: the run must not have started training"
    assert proc.returncode == 130, err
    assert elapsed < 15, f"took {elapsed:.2f}s"
    assert "Traceback" not in err
    assert not (tmp_path / "model_checkpoint.pth").exists()


def test_ctrl_c_to_the_process_group_is_handled_once(tmp_path, big_data_dir):
    rc, out, err, elapsed = signal_mid_epoch(tmp_path, big_data_dir, signal.SIGINT, group=True)
    assert rc == 130, err
    assert err.count("received SIGINT") == 1, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert out.count("stopped by SIGINT") == 1
    assert load_checkpoint(tmp_path / "model_checkpoint.pth")["step"] > 0


def test_second_signal_while_stopping_does_not_corrupt(tmp_path, big_data_dir):
    # Large batches: the stop waits for the batches in flight, so the run is
    # still stopping when the next signals come (checked, not assumed).
    proc = start_trainer(
        "--data-dir", big_data_dir, "--epochs", "2", "--batch-size", "2000",
        "--log-interval", "1", cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_for_line(proc, "epoch 1/2 [")
        proc.send_signal(signal.SIGINT)
        proc.err.wait_for(lambda line: "received SIGINT: stopping" in line, 30)
        assert proc.poll() is None, "premise: the run must still be stopping"
        for _ in range(4):
            proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        stop_group(proc)
    assert proc.returncode == 130
    assert "again" in err and "Traceback" not in err
    state = load_checkpoint(tmp_path / "model_checkpoint.pth")
    assert state["step"] > 0


@pytest.mark.parametrize(
    "settings",
    [
        [],
        ["--optimizer", "sgd", "--momentum", "0.9", "--lr-schedule", "onecycle", "--lr", "0.05"],
        ["--recipe", "fast"],  # Adam, one-cycle
        ["--optimizer", "adam", "--lr", "0.002", "--lr-schedule", "cosine", "--warmup", "0.1"],
    ],
    ids=["sample", "sgd-onecycle", "adam-onecycle", "adam-cosine"],
)
def test_mid_epoch_stop_and_resume_is_bitwise_identical(tmp_path, big_data_dir, settings):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = ["--data-dir", big_data_dir, "--epochs", "2", *ONE, *settings]
    assert run_trainer(*common, cwd=tmp_path / "a").returncode == 0
    rc, out, err, _ = signal_mid_epoch(
        tmp_path / "b", big_data_dir, signal.SIGTERM, [*ONE, *settings]
    )
    assert rc == 143, err
    stopped = load_checkpoint(tmp_path / "b" / "model_checkpoint.pth")
    assert stopped["epoch"] == 0 and 0 < stopped["step"] < stopped["batches_per_epoch"]
    assert run_trainer(*common, "--resume", cwd=tmp_path / "b").returncode == 0
    a = load_checkpoint(tmp_path / "a" / "model_checkpoint.pth")
    b = load_checkpoint(tmp_path / "b" / "model_checkpoint.pth")
    assert_same_weights(a, b)  # weights and every optimizer state tensor
    assert [m["lr"] for m in a["metrics"]] == [m["lr"] for m in b["metrics"]]


def test_target_accuracy_stops_at_the_first_epoch_that_reaches_it(tmp_path, data_dir):
    # (--log-interval past the epoch: no rows within it, so the target is
    # judged at epochs' ends only; tests/test_target.py has the rows'.)
    flags = ["--epochs", "6", "--target-accuracy", "90", "--num-processes", "1"]
    proc = run_trainer("--data-dir", data_dir, *flags, "--log-interval", "1000", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = epoch_rows(tmp_path / "model_checkpoint.metrics.jsonl")
    decided = [checkpoint.decided_by(r) for r in rows]  # the validation images' accuracy
    assert "validation_accuracy_percent" in rows[-1] and decided[-1] >= 90 > max(decided[:-1])
    assert len(rows) < 6
    (target,) = loglines.parse_lines("target", proc.stdout)
    assert target["epoch"] == len(rows)
    state = load_checkpoint(tmp_path / "model_checkpoint.pth")
    assert (state["epoch"], state["step"]) == (len(rows), 0)


def test_a_resume_with_more_epochs_says_what_it_does_to_the_schedule(tmp_path, data_dir):
    common = ["--data-dir", data_dir, *ONE, "--lr-schedule", "cosine"]
    assert run_trainer(*common, "--epochs", "1", cwd=tmp_path).returncode == 0
    proc = run_trainer(*common, "--epochs", "2", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stdout.splitlines() if "schedule is now planned" in line]
    assert len(notes) == 1 and "over 2 epochs (was 1)" in notes[0]


def test_killed_worker_fails_the_run_and_keeps_the_checkpoint(tmp_path, big_data_dir):
    proc = start_trainer(
        "--data-dir",
        big_data_dir,
        "--epochs",
        "2",
        "--log-interval",
        "20",
        "--checkpoint-interval",
        "0",
        cwd=tmp_path,
    )
    try:
        wait_for_line(proc, "epoch 1/2: test loss", timeout=120)
        saved = (tmp_path / "model_checkpoint.pth").read_bytes()
        wait_for_line(proc, "epoch 2/2 [")
        victim = worker_pids(proc.pid)[1]
        # Workers volunteer for the OOM killer, so that the parent survives to report.
        assert open(f"/proc/{victim}/oom_score_adj").read().strip() == "500"
        assert open(f"/proc/{proc.pid}/oom_score_adj").read().strip() == "0"
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        out, err = finish(proc)
        elapsed = time.monotonic() - killed
    finally:
        stop_group(proc)
    assert proc.returncode == 1
    assert elapsed < 5
    assert f"worker 1 (pid {victim}) was killed by SIGKILL" in err
    assert "Traceback" not in err
    assert (tmp_path / "model_checkpoint.pth").read_bytes() == saved
    assert load_checkpoint(tmp_path / "model_checkpoint.pth")["epoch"] == 1


def test_sigkill_of_the_parent_at_any_moment_leaves_a_loadable_checkpoint(tmp_path, big_data_dir):
    """Saves every 50 ms, killed at varied moments: the file always loads."""
    outcomes = []
    for delay in (0.05, 0.13, 0.21, 0.34, 0.55):
        proc = start_trainer(
            "--data-dir",
            big_data_dir,
            "--epochs",
            "3",
            "--checkpoint-interval",
            "0.05",
            "--resume",
            "--log-interval",
            "1",
            cwd=tmp_path,
        )
        try:
            wait_for_line(proc, " [")  # training (any epoch)
            time.sleep(delay)  # a moment, not a state: the kills are meant to land anywhere
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            stop_group(proc)
        path = tmp_path / "model_checkpoint.pth"
        # A kill before the first periodic save leaves no file yet; any file there must load.
        state = load_checkpoint(path) if path.exists() else None
        outcomes.append(state["epoch"] * state["batches_per_epoch"] + state["step"] if state else 0)
    assert outcomes[-1] > 0
    # Each resume continued from the previous kill's checkpoint, never went back.
    assert outcomes == sorted(outcomes)
    proc = run_trainer("--data-dir", big_data_dir, "--epochs", "3", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "did not end: it was killed" in proc.stderr
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


@pytest.mark.skipif(
    not os.path.isdir(FASHION) and not os.environ.get("CI"),
    reason="needs Debian's dataset-fashion-mnist (installed by .ci/run)",
)
def test_real_fashion_mnist_one_epoch_two_workers(tmp_path):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in os.listdir(FASHION):
        os.symlink(os.path.join(FASHION, name), raw / name)
    proc = run_trainer(
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        tmp_path / "data",
        "--epochs",
        "1",
        "--num-processes",
        "2",
        "--log-interval",
        "200",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = epoch_rows(tmp_path / "model_checkpoint.metrics.jsonl")
    print(f"fashion-mnist 1 epoch, 2 workers: {row}")
    assert row["accuracy_percent"] >= 70
