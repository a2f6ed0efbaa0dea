"""Shared fixtures: synthetic IDX data and a helper that runs the real trainer."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import synthetic_data
from procs import LineReader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MAIN = os.path.join(REPO, "main.py")
# The genuine MNIST files, where the workplace provides them (never copied into the repo).
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
FASHION = "/usr/share/datasets/fashion-mnist"
TRAIN = os.path.join(REPO, "train.py")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Unpacked synthetic MNIST: 2,560 train (40 batches of 64), 500 test."""
    root = tmp_path_factory.mktemp("data")
    synthetic_data.write_files(str(root), train=2560, test=500)
    return str(root)


@pytest.fixture(scope="session")
def big_data_dir(tmp_path_factory):
    """Enough batches (20k samples, 287 batches of 64 beside the 1,666 held out) to
    signal a run mid-epoch."""
    root = tmp_path_factory.mktemp("bigdata")
    synthetic_data.write_files(str(root), train=20000, test=500)
    return str(root)


@pytest.fixture(scope="session")
def mnist_dir():
    """A --data-dir with the real MNIST. Outside CI the tests that need it skip
    without it; CI provides ../shared/data, so there they fail instead."""
    if not os.path.isfile(os.path.join(SHARED_DATA, "MNIST", "raw", "train-images-idx3-ubyte")):
        if not os.environ.get("CI"):
            pytest.skip(f"real MNIST not found in {SHARED_DATA} (CI provides it)")
    return SHARED_DATA


def trainer_cmd(*args, entry=MAIN):
    return [sys.executable, entry, *map(str, args)]


def run_trainer(*args, cwd, entry=MAIN, timeout=180):
    """Run the trainer to completion; returns the CompletedProcess."""
    return subprocess.run(
        trainer_cmd(*args, entry=entry),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_trainer(*args, cwd, entry=MAIN, env=None):
    """Start the trainer in its own process group (so tests can signal the
    group). Its output is read as it arrives, by proc.out and proc.err."""
    proc = subprocess.Popen(
        trainer_cmd(*args, entry=entry),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    proc.out, proc.err = LineReader(proc.stdout), LineReader(proc.stderr)
    return proc


def wait_for_line(proc, needle, timeout=60):
    """Read stdout until a line contains NEEDLE (a real deadline: it holds when
    the trainer prints nothing); returns the lines read so far."""
    proc.out.wait_for(lambda line: needle in line, timeout)
    return list(proc.out.lines)


def finish(proc, timeout=30):
    """Wait for the trainer's exit and the end of its output (which also ends
    only when no process of the run, workers included, holds its pipes);
    returns (stdout, stderr)."""
    deadline = time.monotonic() + timeout
    proc.wait(timeout=timeout)
    out = proc.out.rest(max(0.1, deadline - time.monotonic()))
    err = proc.err.rest(max(0.1, deadline - time.monotonic()))
    return out, err


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def stop_group(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
