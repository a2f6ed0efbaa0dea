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


# A data root holding the real MNIST (DIR/MNIST/raw), named for the tests.
MNIST_ENV = "MNIST_HOGWILD_DATA"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
MNIST_FILES += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def mnist_roots():
    """Where the tests look for the real MNIST, in order: $MNIST_HOGWILD_DATA
    (none: nowhere), the product's default --data-dir (./data) and the
    workplace's ../shared/data.
    Only unpacked files count: a test then reads them and writes nothing there."""
    named = os.environ.get(MNIST_ENV)
    if named == "none":  # (the suite as a newcomer without the data runs it)
        return []
    return [r for r in (named, os.path.join(REPO, "data"), SHARED_DATA) if r]


def real_mnist():
    """The first data root of mnist_roots() with the four MNIST files, or None."""
    for root in mnist_roots():
        if all(os.path.isfile(os.path.join(root, "MNIST", "raw", n)) for n in MNIST_FILES):
            return root
    return None


NO_MNIST = (
    f"real MNIST not found unpacked in DIR/MNIST/raw of ${MNIST_ENV}, ./data or ../shared/data; "
    f"to run them: {MNIST_ENV}=DIR, a data root holding it (python main.py --dry-run "
    f"downloads it into ./data, then gunzip data/MNIST/raw/*.gz)"
)


@pytest.fixture(scope="session")
def mnist_dir():
    """A --data-dir with the real MNIST (see real_mnist), or the test skips,
    saying how to run it."""
    root = real_mnist()
    if root is None:
        pytest.skip(NO_MNIST)
    return root


# ----- skips never pass in silence ------------------------------------------
# The skips CI may have: it has no GPU. Any other skip fails a CI run.
SKIPS_CI_CANNOT_RUN = ("needs a CUDA GPU",)
_skipped = {}  # reason -> test ids


def pytest_runtest_logreport(report):
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI") and exitstatus == 0 and ci_could_run():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def ci_could_run():
    """The skip reasons that CI has the means to run."""
    return [r for r in _skipped if not any(r.startswith(s) for s in SKIPS_CI_CANNOT_RUN)]


def pytest_terminal_summary(terminalreporter):
    if not _skipped:
        return
    terminalreporter.section("skipped, by reason (and how to run them)")
    for reason, ids in sorted(_skipped.items(), key=lambda kv: -len(kv[1])):
        files = sorted({i.split("::")[0] for i in ids})
        terminalreporter.write_line(f"{len(ids)} skipped ({', '.join(files)}): {reason}")
    if os.environ.get("CI") and ci_could_run():
        terminalreporter.write_line("CI has the means to run these: the run fails", red=True)


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
