"""Where the commands write: atomically, with one clear error, and never over
a model (the checkpoint they read, any file a training run owns beside it,
or any checkpoint at all)."""

import os

from mnist_hogwild.core.errors import InputError, UsageError
from mnist_hogwild.training import beside, checkpoint
from mnist_hogwild.training.beside import in_history, run_files


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
    if os.path.lexists(target) and not replaceable(target):
        raise UsageError(
            f"{path} holds a trained model (a checkpoint, maybe of another version or "
            f"network): writing there would replace it; choose another path"
        )


def replaceable(path):
    """Whether a command may write over PATH: a regular file that holds no
    checkpoint (see beside.is_saved_checkpoint)."""
    return os.path.isfile(path) and not beside.is_saved_checkpoint(path)


def write_output(path, write, model):
    """Write a command's output file PATH atomically (see check_output)."""
    check_output(path, model)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        checkpoint.atomic_write(path, write)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
