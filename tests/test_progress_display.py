"""Progress where a person watches: a bar redrawn in place on a terminal (a
real pty, as `script` makes), today's lines on a pipe."""

import shutil
import subprocess

import pytest
from conftest import trainer_cmd

from mnist_hogwild.core import loglines

pytestmark = pytest.mark.skipif(not shutil.which("script"), reason="needs script(1) for a pty")


def under_a_terminal(*args, cwd, size="stty cols 100 rows 30; "):
    """The trainer's output as a terminal receives it (SIZE: the pty's size)."""
    command = " ".join(f"'{a}'" for a in trainer_cmd(*args))
    proc = subprocess.run(
        ["script", "-qec", size + command, "/dev/null"],
        cwd=cwd, capture_output=True, timeout=300, env={"TERM": "xterm", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return proc.returncode, proc.stdout.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("size", ["stty cols 100 rows 30; ", ""], ids=["sized", "unsized pty"])
def test_a_terminal_gets_one_bar_per_epoch_redrawn_in_place(big_data_dir, tmp_path, size):
    code, out = under_a_terminal(
        "--data-dir", big_data_dir, "--epochs", "2", "--log-interval", "5", cwd=tmp_path,
        size=size,
    )  # fmt: skip
    assert code == 0, out
    lines = out.split("\n")
    assert len(lines) <= 20, out
    assert out.count("\r") > 10 and "epoch 1/2:" in out and "%|" in out  # the bar, redrawn
    assert not loglines.parse_lines("progress", out.replace("\r", "\n"))  # no progress lines
    assert (
        len(loglines.parse_lines("epoch", out.replace("\r", "\n"))) == 2
    )  # the epochs' lines stay


@pytest.mark.slow
def test_a_pipe_gets_the_progress_lines_unchanged(big_data_dir, tmp_path):
    """A line once an interval of batches is done since the last. The parent
    reports when it wakes, and on a busy machine one wake-up may cover several
    intervals: 28 intervals in the epoch leave room for late wake-ups."""
    proc = subprocess.run(
        trainer_cmd("--data-dir", big_data_dir, "--epochs", "1", "--log-interval", "10"),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout and "%|" not in proc.stdout
    progress = loglines.parse_lines("progress", proc.stdout)
    assert len(progress) >= 5 and {p["epoch"] for p in progress} == {1}, proc.stdout
    samples = [p["samples"] for p in progress]
    assert samples == sorted(set(samples)), samples
