"""The files that live beside a checkpoint PATH, named here and nowhere else:

    PATH                    the checkpoint: model, optimizer state, progress
    STEM.models/            the history: every model, one file each, written once
    STEM.best.pth           a copy of the best model in STEM.models/ of the data set
    STEM.metrics.jsonl      one JSON line per evaluated epoch (and per log interval)
    STEM.metrics.csv        one row per evaluated epoch
    STEM.tensorboard/       TensorBoard's event files, a folder per run (when installed)
    .NAME.lock              held (flock) by the run that uses PATH

(STEM is PATH without its extension, NAME its file name; the older layout's
STEM.prev.pth and STEM.prev.best.pth are still read and kept.) Torch-free.
"""

import os

MODELS = ".models"
BEST = ".best.pth"
METRICS = ".metrics.jsonl"
METRICS_CSV = ".metrics.csv"
TENSORBOARD = ".tensorboard"
OLDER_LAYOUT = (".prev.pth", ".prev.best.pth")  # slots of versions before the history
COPIES = (BEST, *OLDER_LAYOUT)  # model files beside a checkpoint, kept in its history


def sibling(path, suffix):
    return os.path.splitext(path)[0] + suffix


def models(path):
    """STEM.models/: checkpoint PATH's history folder."""
    return sibling(path, MODELS)


def best(path):
    return sibling(path, BEST)


def metrics(path):
    return sibling(path, METRICS)


def metrics_csv(path):
    return sibling(path, METRICS_CSV)


def tensorboard(path):
    return sibling(path, TENSORBOARD)


def lock(path):
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.lock")


def in_history(path):
    """Whether PATH is a file in a model history (STEM.models/NAME)."""
    return os.path.dirname(os.path.realpath(path)).endswith(MODELS)


def run_files(path):
    """Every file a run on checkpoint PATH owns besides its history."""
    return [path, metrics(path), metrics_csv(path), *(sibling(path, s) for s in COPIES), lock(path)]
