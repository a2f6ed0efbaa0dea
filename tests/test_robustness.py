"""Nothing lost, nothing left behind: readers that go away, a killed parent,
two runs on one path, a diverging run, data that changes under a run. Real
trainers, real signals, real pipes."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from mnist_hogwild.core import loglines
from conftest import finish, load_checkpoint, run_trainer, start_trainer, stop_group, trainer_cmd
import synthetic_data
from procs import LineReader, alive, asleep, pids_with_env, wait_until, worker_pids

pytestmark = pytest.mark.slow
TAG = "MNIST_HOGWILD_TEST_RUN"


PIPELINE = """
import signal, subprocess, sys
signal.signal(signal.SIGINT, lambda *_: None)  # a shell survives its pipeline's Ctrl-C
argv, log, errors, rc = sys.argv[1:-3], *sys.argv[-3:]
with open(errors, "w") as err:
    trainer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
tee = subprocess.Popen(["tee", log], stdin=trainer.stdout)
trainer.stdout.close()
print(trainer.pid, tee.pid, flush=True)
code = trainer.wait()
open(rc, "w").write(str(code))
tee.wait()
"""


def piped_run(tmp_path, data_dir, *flags):
    """`python main.py ... | tee log` as a shell runs it: the trainer and tee in
    one process group (a Ctrl-C reaches both), tee's output read by the test;
    the trainer's stderr goes to a file, its exit code to another."""
    argv = trainer_cmd("--data-dir", data_dir, "--epochs", "20", "--log-interval", "5", *flags)
    files = [str(tmp_path / name) for name in ("train.log", "stderr.log", "rc")]
    group = subprocess.Popen(
        [sys.executable, "-c", PIPELINE, *argv, *files],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    group.out = LineReader(group.stdout)
    trainer, tee = map(int, group.out.next_line(time.monotonic() + 30).split())
    return group, trainer, tee, files


@pytest.mark.parametrize("order", ["reader gone first", "signal to the whole group"])
def test_ctrl_c_on_a_pipe_whose_reader_dies_still_saves_at_the_stop(tmp_path, big_data_dir, order):
    group, trainer, tee, (_, stderr_log, rc_file) = piped_run(tmp_path, big_data_dir)
    try:
        group.out.wait_for(lambda line: line.startswith("epoch 1/20 ["), 60)
        if order == "reader gone first":
            os.kill(tee, signal.SIGKILL)
            assert wait_until(lambda: not alive(tee), 10)
            os.kill(trainer, signal.SIGINT)
        else:
            os.killpg(group.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        group.wait(timeout=60)
    finally:
        stop_group(group)
    err = open(stderr_log).read()
    assert open(rc_file).read() == "130", err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    stopped = loglines.parse_lines("stopped", err)  # stdout is gone: the line came here
    assert len(stopped) == 1, err
    state = load_checkpoint(tmp_path / "model_checkpoint.pth")
    assert (state["epoch"], state["step"]) == (stopped[0]["epoch"] - 1, stopped[0]["step"])
    assert state["step"] > 0


def tagged_trainer(tmp_path, data_dir, *flags):
    tag = uuid.uuid4().hex
    proc = start_trainer("--data-dir", data_dir, *flags, cwd=tmp_path, env={**os.environ, TAG: tag})
    return proc, tag


MOMENTS = ["start-up", "training", "saving", "evaluating", "after a stop signal"]


@pytest.fixture(scope="module")
def big_test_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigtest")
    synthetic_data.write_files(str(root), train=6400, test=100000)
    return str(root)


@pytest.mark.parametrize("moment", MOMENTS)
def test_sigkill_of_the_parent_leaves_no_process_of_the_run(tmp_path, big_test_set, moment):
    big_data_dir = big_test_set
    flags = ["--epochs", "50", "--log-interval", "1"]
    if moment == "saving":
        flags += ["--checkpoint-interval", "0.001"]  # it saves all the time
    proc, tag = tagged_trainer(tmp_path, big_data_dir, *flags)
    try:
        if moment == "start-up":
            assert wait_until(lambda: len(pids_with_env(TAG, tag)) >= 2, 30)  # + a worker
        else:
            proc.out.wait_for(lambda line: line.startswith("epoch 1/50 ["), 60)
            assert len(worker_pids(proc.pid)) == 2, "premise: the workers exist"
        if moment == "evaluating":
            # The workers wait for the next epoch while the parent evaluates
            # (100k test images: seconds): seen as every worker asleep, for a
            # while, before the epoch's line.
            workers, streak = worker_pids(proc.pid), []

            def evaluating():
                idle = all(asleep(w) for w in workers) and not any(
                    line.startswith("epoch 1/50:") for line in proc.out.lines
                )
                streak.append(idle)
                return streak[-5:] == [True] * 5

            assert wait_until(evaluating, 60, poll=0.01), "premise: the parent evaluates"
        if moment == "after a stop signal":
            proc.send_signal(signal.SIGINT)
        everyone = pids_with_env(TAG, tag)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left = wait_until(lambda: not pids_with_env(TAG, tag), 3)
        survivors = [(p, open(f"/proc/{p}/comm").read().strip()) for p in pids_with_env(TAG, tag)]
    finally:
        for pid in pids_with_env(TAG, tag):
            os.kill(pid, signal.SIGKILL)
        stop_group(proc)
    assert len(everyone) >= 2
    assert left, f"still alive 3 s after the parent's SIGKILL: {survivors}"


def test_a_second_run_on_the_same_checkpoint_is_refused_and_the_first_goes_on(
    tmp_path, big_data_dir
):
    first = start_trainer("--data-dir", big_data_dir, "--epochs", "50", cwd=tmp_path)
    try:
        first.out.wait_for(lambda line: line.startswith("epoch 1/50 ["), 60)
        second = run_trainer("--data-dir", big_data_dir, "--epochs", "1", cwd=tmp_path)
        assert first.poll() is None, "premise: the first run is still training"
        first.send_signal(signal.SIGINT)  # the first run's own end: a stop, saved
        out, err = finish(first, timeout=60)
    finally:
        stop_group(first)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by another run (pid {first.pid} on host" in lines[0]
    assert first.returncode == 130, err
    (stopped,) = loglines.parse_lines("stopped", out)
    state = load_checkpoint(tmp_path / "model_checkpoint.pth")
    assert (state["epoch"], state["step"]) == (stopped["epoch"] - 1, stopped["step"])


def test_a_diverging_resume_stops_and_keeps_the_good_and_the_best_model(tmp_path, data_dir):
    common = ["--data-dir", data_dir, "--num-processes", "1"]
    assert run_trainer(*common, "--epochs", "1", cwd=tmp_path).returncode == 0
    good = (tmp_path / "model_checkpoint.pth").read_bytes()
    best = (tmp_path / "model_checkpoint.best.pth").read_bytes()
    proc = run_trainer(*common, "--epochs", "3", "--resume", "--lr", "1e12", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: the training loss became nan") or "not finite" in lines[-1]
    assert "the last good checkpoint model_checkpoint.pth is kept" in lines[-1]
    assert (tmp_path / "model_checkpoint.pth").read_bytes() == good
    assert (tmp_path / "model_checkpoint.best.pth").read_bytes() == best


def test_a_fresh_run_and_a_dry_run_over_a_trained_model_keep_it_loadable(tmp_path, data_dir):
    common = ["--data-dir", data_dir, "--num-processes", "1"]
    assert run_trainer(*common, "--epochs", "2", cwd=tmp_path).returncode == 0
    trained = (tmp_path / "model_checkpoint.pth").read_bytes()
    proc = run_trainer(*common, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0 and "nothing is saved" in proc.stdout
    assert (tmp_path / "model_checkpoint.pth").read_bytes() == trained
    proc = run_trainer(*common, "--epochs", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (kept,) = [p for p in (tmp_path / "model_checkpoint.models").iterdir() if "_e02_" in p.name]
    assert kept.read_bytes() == trained and load_checkpoint(kept)["epoch"] == 2


def test_a_data_file_truncated_under_the_workers_is_named(tmp_path, big_data_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(big_data_dir, data)
    images = data / "MNIST" / "raw" / "train-images-idx3-ubyte"
    proc = start_trainer(
        "--data-dir", data, "--epochs", "50", "--checkpoint-interval", "0", cwd=tmp_path
    )
    try:
        proc.out.wait_for(lambda line: line.startswith("epoch 1/50: test loss"), 120)
        saved = (tmp_path / "model_checkpoint.pth").read_bytes()
        assert proc.poll() is None, "premise: still training"
        os.truncate(images, 4096)  # the workers' mapped pages past it are gone
        out, err = finish(proc, timeout=60)
    finally:
        stop_group(proc)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "SIGBUS" in lines[0] and "train-images-idx3-ubyte" in lines[0], err
    assert (tmp_path / "model_checkpoint.pth").read_bytes() == saved
    assert all(not alive(p) for p in worker_pids(proc.pid))


def test_sigkill_of_a_torchrun_launcher_leaves_no_leader_or_worker(tmp_path, big_data_dir):
    """main.py --nnodes 1 (torchrun's agent in this process, the leader its child,
    the leader's workers below): SIGKILL of the launcher ends them all."""
    port = 29500 + os.getpid() % 1000
    flags = ["--nnodes", "1", "--rdzv-endpoint", f"127.0.0.1:{port}", "--epochs", "50"]
    proc, tag = tagged_trainer(tmp_path, big_data_dir, *flags, "--log-interval", "5")
    try:
        proc.out.wait_for(lambda line: line.startswith("epoch 1/50 ["), 120)
        everyone = pids_with_env(TAG, tag)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gone = wait_until(lambda: not pids_with_env(TAG, tag), 3)
    finally:
        for pid in pids_with_env(TAG, tag):
            os.kill(pid, signal.SIGKILL)
        stop_group(proc)
    assert len(everyone) >= 4  # launcher, leader, 2 workers
    assert gone, "a leader or worker outlived its launcher by 3 s"
