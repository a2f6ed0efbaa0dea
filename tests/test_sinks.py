"""The metrics in the forms their usual viewers read: STEM.metrics.csv beside
the JSON lines, and TensorBoard's event files when tensorboard is installed
(a resumed run adds to its run's folder, nothing twice)."""

import csv
import importlib.util
import json
import os

import pytest

from conftest import run_trainer
from mnist_hogwild.training import sinks


def epoch_rows(path):
    with open(path) as f:
        return [r for r in map(json.loads, f) if r.get("kind") == "epoch"]


@pytest.mark.slow
def test_a_run_writes_its_epochs_as_csv_and_tensorboard_events(tmp_path, data_dir):
    common = ["--data-dir", data_dir, "--epochs", "2", "--log-interval", "1000"]
    assert run_trainer(*common, "--epochs", "1", cwd=tmp_path).returncode == 0
    resumed = run_trainer(*common, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    rows = epoch_rows(tmp_path / "model_checkpoint.metrics.jsonl")
    with open(tmp_path / "model_checkpoint.metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in table] == [1, 2]
    for row, line in zip(rows, table, strict=True):
        assert float(line["accuracy_percent"]) == pytest.approx(row["accuracy_percent"])
        assert float(line["train_loss"]) == pytest.approx(row["train_loss"])
    if importlib.util.find_spec("tensorboard") is None:
        assert not (tmp_path / "model_checkpoint.tensorboard").exists()
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = os.listdir(tmp_path / "model_checkpoint.tensorboard")  # one run, resumed
    events = EventAccumulator(str(tmp_path / "model_checkpoint.tensorboard" / run)).Reload()
    accuracy = [(e.step, e.value) for e in events.Scalars("accuracy/test")]
    assert accuracy == [(r["epoch"], pytest.approx(r["accuracy_percent"])) for r in rows]


def test_a_sink_that_fails_is_one_warning_and_the_run_goes_on():
    said = []

    class Broken(sinks.Sink):
        def write(self, state):
            raise OSError(28, "No space left on device")

    sink = sinks.Guarded(Broken(), said.append)
    sink.write({"metrics": []})
    sink.write({"metrics": []})
    assert said == ["Broken metrics not written from now on: [Errno 28] No space left on device"]
