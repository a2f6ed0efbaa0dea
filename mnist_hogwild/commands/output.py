"""Where the commands write: atomically, with one clear error, and never over
a model they did not train (the checkpoint they read, or any file a
training run owns beside it)."""

import os

from mnist_hogwild.core.errors import CheckpointError, InputError, UsageError
from mnist_hogwild.training import checkpoint, history
from mnist_hogwild.training.checkpoint_manager import run_files
from model import Net


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
    if os.path.dirname(target) == os.path.realpath(history.folder(model)):
        raise UsageError(
            f"{path} is in {history.folder(model)}, where only training writes (each model "
            f"once); choose another path"
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
