"""The files that live beside a checkpoint PATH, named here and nowhere else:

    PATH                    the checkpoint: model, optimizer state, progress
    STEM.models/            the history: every model, one file each, written once
    STEM.best.pth           a copy of the best model in STEM.models/ of the data set
    STEM.metrics.jsonl      one JSON line per evaluated epoch (and per log interval)
    STEM.metrics.csv        one row per evaluated epoch
    STEM.tensorboard/       TensorBoard's event files, a folder per run (when installed)
    .STEM.lock              held (flock) by the run that uses PATH

(STEM is PATH without its extension; the older layout's STEM.prev.pth and
STEM.prev.best.pth are still read and kept.) These names come from STEM, so
a.pth and a.pt would share them: a run refuses a checkpoint whose STEM
another checkpoint beside it already has (sharing), and one that is a file
of another checkpoint's (owned_by). Torch-free.
"""

import os
import re
import zipfile

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
    directory, stem = os.path.split(os.path.splitext(path)[0])
    return os.path.join(directory, f".{stem}.lock")


SIDE_FILES = (BEST, *OLDER_LAYOUT, METRICS, METRICS_CSV)
HISTORY_FILE = re.compile(r"_[0-9a-f]{8}\.pth(\.damaged|\.not-a-file)?\d*$")


def not_a_folder(models):
    """What to say when MODELS (STEM.models) is a file, not a folder."""
    return f"{models} is a file, not the folder of models: move it away (e.g. mv {models} {models}.file)"


def in_history(path):
    """Whether PATH is a file in a model history (STEM.models/NAME)."""
    return is_history(os.path.dirname(os.path.realpath(path)))


def is_history(folder):
    """Whether FOLDER is a checkpoint's STEM.models/ (it holds models, or its
    checkpoint's other files are beside it)."""
    if not folder.endswith(MODELS):
        return False
    stem = folder[: -len(MODELS)]
    if any(os.path.exists(stem + s) for s in (BEST, METRICS)) or os.path.exists(lock(stem)):
        return True
    try:
        return any(HISTORY_FILE.search(n) for n in os.listdir(folder))
    except OSError:
        return False


def owned_by(path):
    """The checkpoint files PATH belongs to as a side file (its history, its
    best copy, metrics, TensorBoard folder), described; "" if none."""
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    if is_history(folder):
        return f"a file of the model history {folder}/, where each model is written once"
    if any(part.endswith(TENSORBOARD) for part in folder.split(os.sep)):
        return "inside a TensorBoard folder of another checkpoint"
    for suffix in SIDE_FILES:
        stem = real[: -len(suffix)] if real.endswith(suffix) else None
        if stem and (os.path.isdir(stem + MODELS) or os.path.exists(stem + METRICS)):
            return f"the {suffix} file of the checkpoint beside {stem + MODELS}/"
    return ""


def sharing(path):
    """Another checkpoint whose files beside it would be PATH's (a.pt for
    a.pth: both keep a.models/, a.best.pth, a.metrics.jsonl), or None."""
    directory, name = os.path.split(os.path.abspath(path))
    stem = os.path.splitext(name)[0]
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    for other in sorted(names):
        there = os.path.join(directory, other)
        if other == name or os.path.splitext(other)[0] != stem or not os.path.isfile(there):
            continue
        if os.path.realpath(there) != os.path.realpath(path) and is_saved_checkpoint(there):
            return there
    return None


def is_saved_checkpoint(path):
    """Whether PATH (a regular file) holds what torch.save writes, of any
    version or network: a zip with a data.pkl and, unlike an export's
    TorchScript, no code; or the older format, a pickle. By content: a
    checkpoint this version cannot load is still somebody's model."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return starts_with(path, b"\x80")  # (a pickle's protocol byte)
    saved = any(m.endswith("data.pkl") for m in members)
    return saved and not any("/code/" in m for m in members)


def starts_with(path, magic):
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def run_files(path):
    """Every file a run on checkpoint PATH owns besides its history."""
    return [path, metrics(path), metrics_csv(path), *(sibling(path, s) for s in COPIES), lock(path)]
