"""--target-accuracy within an epoch (training/target.py): a run that gets
there mid-epoch stops there, saved, exit 0, and a resume trains on from there."""

import re

from conftest import load_checkpoint, run_trainer

from mnist_hogwild.core import loglines


def test_a_run_stops_at_the_interval_row_that_reaches_the_target(big_data_dir, tmp_path):
    flags = ["--data-dir", big_data_dir, "--num-processes", "2", "--epochs", "1"]
    stop_at = ["--target-accuracy", "50", "--log-interval", "5"]
    proc = run_trainer(*flags, *stop_at, "--checkpoint", "m.pth", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (line,) = [s for s in proc.stdout.splitlines() if "reached --target-accuracy" in s]
    stop = re.search(r"stopping early, at batch (\d+) of (\d+) \(checked at (\d+) interval", line)
    assert stop, line
    step, per_epoch, checks = map(int, stop.groups())
    assert 0 < step < per_epoch and checks >= 1
    state = load_checkpoint(tmp_path / "m.pth")
    assert (state["epoch"], state["step"]) == (0, step)  # saved where it stopped
    assert state["metrics"][-1]["validation_accuracy_percent"] >= 50  # judged on the whole split
    # A resume without the target trains the rest of that epoch, and no more.
    again = run_trainer(*flags, "--resume", "--checkpoint", "m.pth", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"({per_epoch - step} batches this run)" in again.stdout
    assert loglines.parse_lines("epoch", again.stdout)[-1]["epoch"] == 1
