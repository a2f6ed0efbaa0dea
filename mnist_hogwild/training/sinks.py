"""Where a run's metrics go besides the checkpoint, in the forms their usual
viewers read: STEM.metrics.jsonl (this project's own, which `plot` and
`serve` read), STEM.metrics.csv (a spreadsheet, pandas) and, when the
tensorboard package is importable, TensorBoard's event files in
STEM.tensorboard/RUN (`tensorboard --logdir STEM.tensorboard`; the image
does not carry tensorboard). The checkpoint manager writes every sink at each
save; a sink that cannot be had is the no-op Sink.
"""

import csv
import importlib.util
import io
import os

from mnist_hogwild.training import beside, checkpoint

# The CSV's columns: an epoch's row (checkpoint.metrics_lines' "epoch" rows).
CSV_COLUMNS = ("epoch", "train_loss", "test_loss", "accuracy_percent")
CSV_COLUMNS += ("validation_loss", "validation_accuracy_percent", "lr", "samples_per_s")
CSV_COLUMNS += ("seconds", "eval_seconds", "staleness", "staleness_p99")
# TensorBoard's tags, by the row's key.
SCALARS = {"train_loss": "loss/train", "test_loss": "loss/test", "lr": "lr"}
SCALARS |= {"validation_loss": "loss/validation", "accuracy_percent": "accuracy/test"}
SCALARS |= {"validation_accuracy_percent": "accuracy/validation"}
SCALARS |= {"samples_per_s": "samples_per_s"}


class Sink:
    """A place the metrics go: write(state) at every save (the checkpoint dict,
    whose metrics and intervals are the run's whole record); close() at the end."""

    def write(self, state):
        pass

    def close(self):
        pass


class JsonLines(Sink):
    def __init__(self, path):
        self.path = path

    def write(self, state):
        checkpoint.write_metrics(self.path, state["metrics"], state.get("intervals", []))


class Csv(Sink):
    """STEM.metrics.csv: one row an evaluated epoch, rewritten atomically at
    every save (it agrees with the checkpoint, as the JSON lines do)."""

    def __init__(self, path):
        self.path = beside.metrics_csv(path)

    def write(self, state):
        text = io.StringIO()
        table = csv.DictWriter(text, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        table.writeheader()
        table.writerows(state["metrics"])
        data = text.getvalue().encode()
        try:
            checkpoint.atomic_write(self.path, lambda f: f.write(data))
        except OSError as e:
            raise checkpoint.CheckpointError(
                f"could not write {self.path}: {e.strerror or e}"
            ) from None


class TensorBoard(Sink):
    """Event files in STEM.tensorboard/RUN_ID: each evaluated epoch's scalars
    at step EPOCH. Each save opens a writer, writes the epochs it adds and
    closes it, so that no writer's thread outlives the save. A resumed run
    writes to its run's folder again; its first writer drops whatever an
    interrupted one left from its first epoch on (purge_step)."""

    def __init__(self, path):
        self.folder, self.written = beside.tensorboard(path), None

    def write(self, state):
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - when installed

        rows = state["metrics"]
        if not rows:
            return
        run = os.path.join(self.folder, state.get("run_id") or "run")
        if self.written is None:  # each save adds one row: those before are earlier runs'
            self.written = len(rows) - 1
            writer = SummaryWriter(run, purge_step=rows[-1]["epoch"])
        else:
            writer = SummaryWriter(run)
        try:
            for row in rows[self.written :]:
                for key, tag in SCALARS.items():
                    if key in row:
                        writer.add_scalar(tag, row[key], row["epoch"])
        finally:
            writer.close()
        self.written = len(rows)


class Guarded(Sink):
    """SINK, whose failures (a viewer's package that does not load, a full
    disk) are one warning, after which it writes nothing more: the run, the
    checkpoint and the other sinks go on."""

    def __init__(self, sink, warn):
        self.sink, self.warn = sink, warn

    def write(self, state):
        try:
            self.sink.write(state)
        except (ImportError, OSError, RuntimeError, ValueError) as e:
            self.warn(f"{type(self.sink).__name__} metrics not written from now on: {e}")
            self.sink = Sink()

    def close(self):
        self.sink.close()


def sinks(path, warn):
    """Every sink of checkpoint PATH's run: JSON lines and CSV, and TensorBoard
    where its package is installed."""
    found = [JsonLines(path), Csv(path)]
    if importlib.util.find_spec("tensorboard") is not None:
        found.append(Guarded(TensorBoard(path), warn))
    return found
