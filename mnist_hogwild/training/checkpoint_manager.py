"""The checkpoint manager: which files a run owns, and when it writes them.

Files beside --checkpoint PATH (STEM is PATH without its extension):
    PATH                    the checkpoint (checkpoint.py has its format)
    STEM.metrics.jsonl      one JSON line per evaluated epoch
    STEM.best.pth           the best model ever trained at PATH (on its data
                            set): replaced only by an epoch that scores as
                            well or better, whichever run it is in
    STEM.prev.pth           what PATH held before a fresh run (no --resume)
                            replaced it
    STEM.prev.best.pth      the best model of another data set, kept when a
                            fresh run trains PATH on a new one
    .NAME.lock              held (flock) by the run that uses PATH
So a run keeps at most four model files per PATH, whatever the sequence of
runs: the best ever trained there survives any number of fresh runs.

A dry run writes only where PATH does not exist yet, and then only PATH.

The trainer asks due() whether a periodic save is due, and hands over
snapshots to save(); everything else (the lock, keeping the previous model,
the best model, dry runs that must not replace anything) is decided here.
"""

import os
import shutil
import time

from mnist_hogwild.training import checkpoint, paths
from mnist_hogwild.training.checkpoint import Record
from mnist_hogwild.training.lock import PathLock
from mnist_hogwild.core.errors import CheckpointError
from model import Net


def sibling(path, suffix):
    return os.path.splitext(path)[0] + suffix


def run_files(path):
    """Every file a run on checkpoint PATH owns (see the module docstring)."""
    directory, name = os.path.split(path)
    siblings = [sibling(path, s) for s in (".metrics.jsonl", ".best.pth", ".prev.pth")]
    return [
        path,
        *siblings,
        sibling(path, ".prev.best.pth"),
        os.path.join(directory, f".{name}.lock"),
    ]


class CheckpointManager:
    def __init__(self, options, log, warn):
        # A checkpoint name that is a symlink stands for the file it points at:
        # saves update that file (not the link), and its lock is that file's,
        # so two names for one checkpoint are one run's.
        path = options.checkpoint
        self.path = os.path.realpath(path) if os.path.islink(path) else path
        self.interval = options.checkpoint_interval
        self.dry_run, self.resume = options.dry_run, options.resume
        self.log, self.warn = log, warn
        self.directory = os.path.dirname(os.path.abspath(self.path))
        self.best_path = sibling(self.path, ".best.pth")
        self.prev_path = sibling(self.path, ".prev.pth")
        self.lock = PathLock(os.path.join(self.directory, f".{os.path.basename(self.path)}.lock"))
        self.metrics_path = checkpoint.metrics_path(self.path)
        self.writes = True  # False: a dry run over an existing checkpoint, or a follower
        self.writer = None  # the node that writes PATH for this one (see follow)
        self.keep_previous = False  # move the existing files aside at the first save
        self.last_save = time.monotonic()
        # What STEM.best.pth holds: {"accuracy", "epoch", "dataset", "run_id"}, or None.
        self.best = None

    # ----- start ---------------------------------------------------------
    def follow(self, writer):
        """Node WRITER of this job writes PATH (a folder both nodes share, and
        their checkpoints are the same at every save): this node writes
        nothing and takes no lock (the writer holds it for the job). Call
        before open()."""
        self.writer, self.writes = writer, False

    def open(self):
        """Check, before any training, that the run can write what it will
        write; take the path's lock; clear what killed saves left behind."""
        if self.writer is not None:
            self.best = self.read_best()
            return
        paths.check_writable(self.path, self.directory, self.owned_paths())
        self.lock.take(self.path, self.warn)
        for name in paths.remove_stale_temps(self.directory, self.owned_paths()):
            self.warn(f"removed {name}, left by an interrupted save")
        if os.path.exists(self.path) and self.dry_run:
            self.writes = False
            self.log(f"dry run: {self.path} exists and is kept as it is; nothing is saved")
        elif os.path.exists(self.path) and not self.resume:
            self.keep_previous = True
        self.best = self.read_best()

    def read_best(self):
        """What STEM.best.pth holds, or None if it is missing or unreadable
        (then the next evaluated epoch writes it)."""
        if not os.path.exists(self.best_path):
            return None
        try:
            state = checkpoint.load(self.best_path, Net().state_dict())
        except CheckpointError as e:
            self.warn(f"{e}; it will be replaced by this run's best model")
            return None
        return best_record(state)

    def owned_paths(self):
        return [self.path, self.metrics_path, self.best_path, self.prev_path]

    # ----- resume --------------------------------------------------------
    def restore(self, state, model, optimizer, per_epoch):
        """Load the checkpoint's weights and optimizer state in place; its Record."""
        record = Record.from_state(state)
        if record.batches_per_epoch != per_epoch:
            raise CheckpointError(
                f"{self.path} was saved with {record.batches_per_epoch} batches per "
                f"epoch, but this data set gives {per_epoch}: different training data"
            )
        model.load_state_dict(state["model_state"])
        try:
            optimizer.load_state(state["optimizer_state"])
        except ValueError as e:
            raise CheckpointError(f"{self.path} has an unusable optimizer state ({e})") from None
        record.metrics = list(record.metrics)
        record.partial_epoch = dict(record.partial_epoch)
        if self.best is None and record.metrics and self.writes:
            # A checkpoint copied or moved without its best model: the model
            # loaded is the best known, so it is kept before training changes
            # it. Written from what was loaded (on several machines it may be
            # another node's, and the file here unreadable).
            self.keep_best(lambda: checkpoint.save(state, self.best_path), best_record(state))
        return record

    # ----- saving --------------------------------------------------------
    def due(self):
        """Whether a periodic save is due (--checkpoint-interval)."""
        return bool(self.interval) and time.monotonic() - self.last_save >= self.interval

    def save(self, state):
        """Write STATE to the checkpoint; returns the seconds it took."""
        started = time.perf_counter()
        if self.writes:
            if self.keep_previous:
                self.move_previous_aside()
            checkpoint.save(state, self.path)
        self.last_save = time.monotonic()
        return time.perf_counter() - started

    def save_epoch(self, state):
        """An evaluated epoch: the checkpoint, the metrics file, and the best
        model if this epoch is the best ever trained at PATH. A dry run
        writes neither the metrics nor a best model."""
        seconds = self.save(state)
        if not self.writes or self.dry_run:
            return seconds
        checkpoint.write_metrics(self.path, state["metrics"])
        record = best_record(state)
        if self.best is not None and self.best["dataset"] != record["dataset"]:
            self.keep_aside(self.best_path, sibling(self.path, ".prev.best.pth"))
            self.best = None
        if self.best is None or record["accuracy"] >= self.best["accuracy"]:
            # The checkpoint just written is the best: a hard link to it costs
            # no space and no time (a copy where links are not possible).
            self.keep_best(lambda: keep_copy(self.path, self.best_path), record)
        return seconds

    def keep_best(self, write, record):
        """WRITE() writes STEM.best.pth; it then holds RECORD's model."""
        try:
            write()
        except (OSError, CheckpointError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise CheckpointError(
                f"could not write {self.best_path}: {reason}; the checkpoint {self.path} is saved"
            ) from None
        self.best = record

    def best_elsewhere(self, run_id):
        """What STEM.best.pth holds if another run trained it, else None."""
        if self.best is None or self.best["run_id"] == run_id:
            return None
        return self.best

    def saved_where(self):
        """What a line that says "saved ..." names."""
        if self.writes or self.writer is not None:
            return self.path  # (a follower's: saved by the writer, the same file)
        return "nothing (a dry run over an existing checkpoint)"

    def move_previous_aside(self):
        """Before a fresh run's first save: PATH becomes STEM.prev.pth, so the
        model it held is kept (the best ever trained stays STEM.best.pth)."""
        self.keep_previous = False
        self.keep_aside(self.path, self.prev_path)

    def keep_aside(self, path, kept):
        if not os.path.exists(path):
            return
        try:
            keep_copy(path, kept)
        except OSError as e:
            raise CheckpointError(
                f"could not keep the previous {path} as {kept}: {e.strerror or e}; "
                f"nothing was overwritten"
            ) from None
        self.log(f"kept the previous {path} as {kept}")

    # ----- end -----------------------------------------------------------
    def close(self):
        """The run ended (finished, stopped or failed, but not killed)."""
        self.lock.release()


def best_record(state):
    """What a best model is compared by: its last evaluated epoch's accuracy."""
    row = state["metrics"][-1] if state.get("metrics") else {}
    return {
        "accuracy": row.get("accuracy_percent", 0.0),
        "epoch": row.get("epoch", state.get("epoch", 0)),
        "dataset": state.get("config", {}).get("dataset"),
        "run_id": state.get("run_id"),
    }


def keep_copy(path, kept):
    """KEPT becomes a copy of PATH, atomically; PATH itself stays in place
    (a hard link where the file system has them), so a crash at any moment
    leaves a model at PATH."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(kept)), checkpoint.temp_name(kept))
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, kept)
