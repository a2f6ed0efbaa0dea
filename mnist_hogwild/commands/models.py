"""The `models` command: the model history beside a checkpoint
(STEM.models/, training/history.py) as a table, best first per data set."""

import os
import time

from mnist_hogwild.core.errors import InputError
from mnist_hogwild.core.loglines import say
from mnist_hogwild.training import history
from mnist_hogwild.training import beside

COLUMNS = ("name", "data set", "epoch", "accuracy", "written", "")


def run_command(args):
    """Print the table of the models kept at args.checkpoint."""
    kept = history.History(args.checkpoint, say)
    entries = kept.entries()
    if not entries:
        raise InputError(
            f"{kept.directory} holds no models: train on --checkpoint {args.checkpoint} first"
        )
    copy = beside.best(args.checkpoint)
    rows = [
        row(kept, e, copy) for d in sorted({e.dataset for e in entries}) for e in kept.ranked(d)
    ]
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for r in [COLUMNS, *rows]:
        say("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def row(kept, entry, copy):
    path = kept.where(entry.name)
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.stat(path).st_mtime))
    epoch = f"{entry.epoch}+{entry.step} batches" if entry.partial else str(entry.epoch)
    marks = []
    if entry == kept.best(entry.dataset):
        marks.append(f"best of {entry.dataset}")
    if history.same_bytes(path, copy):
        marks.append(f"= {os.path.basename(copy)}")
    return (entry.name, entry.dataset, epoch, f"{entry.accuracy:.2f}%", written, ", ".join(marks))
