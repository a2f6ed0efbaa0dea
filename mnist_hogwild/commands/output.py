"""Where the commands write: atomically, with one clear error, and never over
a model they did not train (the checkpoint they read, or any file a
training run owns beside it)."""

import os

from mnist_hogwild.core.errors import CheckpointError, InputError, UsageError
from mnist_hogwild.core.loglines import say
from mnist_hogwild.training import checkpoint, history
from mnist_hogwild.training import beside
from mnist_hogwild.training.beside import COPIES, in_history, run_files
from mnist_hogwild.training.checkpoint_manager import adopt_found
from model import Net


def keep_found_models(path):
    """Keep in the history beside checkpoint PATH each model found there that it
    lacks (copied in, an older layout), as a training run does before it
    writes: the first command that sees such a file keeps it too. Not a file
    in a history or a copy beside a checkpoint (the run on that checkpoint
    keeps them), nor one that does not load: a command replaces nothing. A
    history that cannot be written gets a note, and the command goes on."""
    path = os.path.realpath(path) if os.path.islink(path) else path
    if path.endswith(COPIES) or in_history(path):
        return
    try:
        adopt_found(history.History(path, say), path, going_on=True, unreadable=False)
    except CheckpointError as e:
        say(f"note: {e}; the next training run on {path} keeps it")


def check_output(path, model):
    """UsageError if PATH is MODEL (the --checkpoint read), one of its run's
    files, or any other trained model (a checkpoint of this program): a
    command's output never replaces one. Call before the work, so that a
    refused path leaves nothing half done."""
    target = os.path.realpath(path)
    for owned in run_files(model):
        if target == os.path.realpath(owned):
            what = "the checkpoint" if owned == model else "a file of the run on"
            raise UsageError(
                f"{path} is {what} {model}: writing there would replace a trained model; "
                f"choose another path"
            )
    folders = [beside.models(model)] + ([os.path.dirname(model)] if in_history(model) else [])
    for models in folders:
        if os.path.dirname(target) == os.path.realpath(models):
            raise UsageError(
                f"{path} is in {models}, where only training writes (each model once); "
                f"choose another path"
            )
    if os.path.isfile(target) and is_checkpoint(target):
        raise UsageError(
            f"{path} holds a trained model (a checkpoint): writing there would replace it; "
            f"choose another path"
        )


def is_checkpoint(path):
    try:
        checkpoint.load(path, Net().state_dict())
    except CheckpointError:
        return False
    return True


def write_output(path, write, model):
    """Write a command's output file PATH atomically (see check_output)."""
    check_output(path, model)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        checkpoint.atomic_write(path, write)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
