"""The checkpoint manager: which files a run owns, and when it writes them.

The files beside --checkpoint PATH are named in beside.py: the checkpoint
(checkpoint.py has its format, rewritten at every save), the history of
models (history.py: written once each; a run keeps its best and its last;
--keep-models prunes), the best's copy (refreshed, never the only copy),
the metrics lines and the lock.
Before a run writes anything, every model file it finds at PATH (copied in,
or the older layout's STEM.prev.pth and STEM.prev.best.pth) is kept in the
history, so no save can replace the only copy of a model.

A dry run writes only where PATH does not exist yet, and then only PATH.

The trainer asks due() whether a periodic save is due, and hands over
snapshots to save(); everything else (the lock, the history, the best
model's copy, dry runs that must not replace anything) is decided here.
"""

import os
import time
from contextlib import contextmanager

from mnist_hogwild.core.config import RunOptions
from mnist_hogwild.training import beside
from mnist_hogwild.training import checkpoint, history, paths
from mnist_hogwild.training.checkpoint import Record
from mnist_hogwild.training.sinks import sinks
from mnist_hogwild.training.history import History, run_tag
from mnist_hogwild.training.lock import PathLock
from mnist_hogwild.core.errors import CheckpointError


def adopt_found(history, path, going_on, unreadable=True):
    """Keep in HISTORY each model file found at checkpoint PATH that it lacks:
    PATH, STEM.best.pth and the older layout's slots; PATH's Entry, or None.
    GOING_ON: PATH's run may go on from it (see History.adopt); UNREADABLE:
    keep the bytes of a file that does not load."""
    found = [path, *(beside.sibling(path, s) for s in beside.COPIES)]
    entries = [history.adopt(p, going_on and p == path, unreadable) for p in found]
    return entries[0]


def check_own(path):
    """CheckpointError unless PATH is a checkpoint of its own: not a file of
    another checkpoint's (its history, its best copy), and not sharing the
    files beside it with another checkpoint of the same STEM."""
    owner = beside.owned_by(path)
    if owner:
        raise CheckpointError(
            f"--checkpoint {path} is {owner}: training there would replace a kept model; "
            f"train on a copy of it (cp {path} new.pth) or on its own checkpoint"
        )
    other = beside.sharing(path)
    if other is not None:
        raise CheckpointError(
            f"--checkpoint {path} would share {beside.models(path)}/, {beside.best(path)} and "
            f"{beside.metrics(path)} with the checkpoint {other}: pass a name of another stem"
        )


class CheckpointManager:
    def __init__(
        self,
        path,
        log,
        warn,
        checkpoint_interval=RunOptions.checkpoint_interval,
        keep_models=RunOptions.keep_models,
        dry_run=False,
        resume=False,
    ):
        """The run's checkpoint PATH, saved every CHECKPOINT_INTERVAL seconds
        too, KEEP_MODELS of each data set kept (the flags of the same names)."""
        # A checkpoint name that is a symlink stands for the file it points at:
        # saves update that file (not the link), and its lock is that file's,
        # so two names for one checkpoint are one run's.
        self.path = os.path.realpath(path) if os.path.islink(path) else path
        self.interval, self.keep_models = checkpoint_interval, keep_models
        self.dry_run, self.resume = dry_run, resume
        self.log, self.warn = log, warn
        self.directory = os.path.dirname(os.path.abspath(self.path))
        self.best_path = beside.best(self.path)
        self.history = History(self.path, log)
        self.lock = PathLock(beside.lock(self.path))
        self.metrics_path = beside.metrics(self.path)
        self.sinks = sinks(self.path, warn)  # (the metrics file, its CSV, TensorBoard's)
        self.writes = True  # False: a dry run over an existing checkpoint, or a follower
        self.writer = None  # the node that writes PATH for this one (see follow)
        self.last_save = time.monotonic()
        self.split = self.run_id = None  # of the last evaluated epoch saved
        self.failed = False  # a save failed (a full disk): the end prunes nothing

    # ----- start ---------------------------------------------------------
    def follow(self, writer):
        """Node WRITER of this job writes PATH (a folder both nodes share, and
        their checkpoints are the same at every save): this node writes
        nothing and takes no lock (the writer holds it for the job). Call
        before open()."""
        self.writer, self.writes = writer, False

    def open(self):
        """Check, before any training, that the run can write what it will
        write; take the path's lock; clear what killed saves left behind;
        keep every model found at PATH in the history."""
        if self.writer is not None:
            return
        check_own(self.path)
        models = None if self.dry_run else self.history.directory
        paths.check_writable(self.path, self.directory, self.owned_paths(), models)
        self.lock.take(self.path, self.warn)
        stale = paths.remove_stale_temps(self.directory, self.owned_paths())
        for name in stale + paths.remove_stale_history_temps(self.history.directory):
            self.warn(f"removed {name}, left by an interrupted save")
        if os.path.exists(self.path) and self.dry_run:
            self.writes = False
            self.log(f"dry run: {self.path} exists and is kept as it is; nothing is saved")
        elif not self.dry_run:
            self.adopt()

    def adopt(self):
        """Keep in the history each model file found at PATH that it lacks."""
        try:
            entry = adopt_found(self.history, self.path, going_on=self.resume)
            if entry is not None and entry.split:  # the checkpoint's split: its best is the copy's
                self.history.refresh_copy(entry.split, self.best_path)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; nothing was overwritten") from None

    def owned_paths(self):
        """The files a save replaces."""
        return [self.path, self.metrics_path, beside.metrics_csv(self.path), self.best_path]

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
        return record

    # ----- saving --------------------------------------------------------
    def due(self):
        """Whether a periodic save is due (--checkpoint-interval)."""
        return bool(self.interval) and time.monotonic() - self.last_save >= self.interval

    @contextmanager
    def writing(self):
        """Around a save's writes: if one raises, close() writes nothing more
        (a full disk: the save's error stays the run's last line)."""
        before, self.failed = self.failed, True
        yield
        self.failed = before

    def save(self, state):
        """Write STATE to the checkpoint; returns the seconds it took."""
        started = time.perf_counter()
        if self.writes:
            with self.writing():
                checkpoint.save(state, self.path)
        self.last_save = time.monotonic()
        return time.perf_counter() - started

    def save_epoch(self, state):
        """An evaluated epoch: the model in the history first (so that no kill
        leaves it only in the checkpoint, which a later write could replace),
        then the checkpoint, the metrics file and the best model's copy. A
        dry run writes neither the history nor the metrics."""
        self.split, self.run_id = history.split_of(state), state.get("run_id")
        if not self.writes or self.dry_run:
            return self.save(state)
        with self.writing():
            latest = self.history.add(state)
            seconds = self.save(state)
            for sink in self.sinks:
                sink.write(state)
            self.history.settle_run(self.run_id, latest)
            self.history.refresh_copy(self.split, self.best_path)
        return seconds

    def best_elsewhere(self, run_id):
        """The history's best model of this run's split if another run
        trained it, else None."""
        best = self.history.best(self.split) if self.split else None
        if best is None or best.run == run_tag(run_id):
            return None
        return best

    def saved_where(self):
        """What a line that says "saved ..." names."""
        if self.writes or self.writer is not None:
            return self.path  # (a follower's: saved by the writer, the same file)
        return "nothing (a dry run over an existing checkpoint)"

    # ----- end -----------------------------------------------------------
    def close(self):
        """The run ended (finished, stopped or failed, but not killed): prune
        the history (this run's models stay: the checkpoint resumes it),
        unless a save failed: then nothing more is written."""
        try:
            if self.writes and not self.dry_run and self.split and not self.failed:
                self.history.prune(self.keep_models, self.run_id)
                self.history.refresh_copy(self.split, self.best_path)
        except (OSError, CheckpointError) as e:
            self.warn(f"could not prune {self.history.directory}: {e}")
        finally:
            for sink in self.sinks:
                sink.close()
            self.lock.release()
