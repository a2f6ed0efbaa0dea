"""The `models` command: the model history beside a checkpoint
(STEM.models/, training/history.py) as a table, best first per split (the
data set and the images a model was judged on: only those compare). It
reads and writes nothing else: a file that does not prove what it holds is
noted, not counted."""

import os
import time

from mnist_hogwild.core.errors import InputError
from mnist_hogwild.core.loglines import say
from mnist_hogwild.training import history
from mnist_hogwild.training import beside

COLUMNS = ("name", "judged on", "epoch", "accuracy", "written", "")


def run_command(args):
    """Print the table of the models kept at args.checkpoint."""
    kept = history.History(args.checkpoint, say, writes=False)
    entries = [e for e in kept.entries() if e.split]
    if not entries:
        raise InputError(
            f"{kept.directory} holds no models: train on --checkpoint {args.checkpoint} first"
        )
    copy = beside.best(args.checkpoint)
    rows = [row(kept, e, copy) for split in kept.splits() for e in kept.ranked(split)]
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for r in [COLUMNS, *rows]:
        say("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def row(kept, entry, copy):
    path = kept.where(entry.name)
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.lstat(path).st_mtime))
    epoch = f"{entry.epoch}+{entry.step} batches" if entry.partial else str(entry.epoch)
    accuracy = "-" if entry.accuracy is None else f"{entry.accuracy:.2f}%"
    marks = [] if entry.comparable else [f"not compared: {entry.why_not_comparable()}"]
    if entry == kept.best(entry.split):
        marks.append(f"best of {entry.split}")
    if history.same_bytes(path, copy):
        marks.append(f"= {os.path.basename(copy)}")
    return (entry.name, entry.split, epoch, accuracy, written, ", ".join(marks))
