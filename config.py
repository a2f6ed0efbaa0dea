"""The training settings: one frozen dataclass, resolved once from flags and checkpoint.

Torch-free, so that main.py can build its flags (and answer --help) before
torch is imported, and the workers receive the resolved config as it is.
"""

from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar

MNIST, FASHION_MNIST = "mnist", "fashion-mnist"
DATASETS = (MNIST, FASHION_MNIST)


class UsageError(Exception):
    """Flags that contradict the checkpoint (exit 2, like argparse)."""


@dataclass(frozen=True)
class TrainConfig:
    """What defines the training itself. The flags for these fields default to
    None in argparse, so that --resume can tell "not given" (take the
    checkpoint's value) from "given" (check it, or override it)."""

    batch_size: int = 64
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.5
    seed: int = 1
    dataset: str = MNIST

    # These fix which batches make up an epoch, so they must match the
    # checkpoint on resume; lr and momentum may be changed on purpose.
    MUST_MATCH: ClassVar[tuple] = ("batch_size", "seed", "dataset")

    @classmethod
    def names(cls):
        return [f.name for f in fields(cls)]

    @classmethod
    def resolve(cls, flags, saved=None, log=print):
        """The config from FLAGS (an argparse namespace or dict; None = not
        given) and SAVED (the checkpoint's "args" dict, or None for a fresh run).

        Raises UsageError when a flag contradicts a MUST_MATCH field."""
        given = flags if isinstance(flags, dict) else vars(flags)
        saved = saved or {}
        values = {}
        for name in cls.names():
            flag_value, saved_value = given.get(name), saved.get(name)
            values[name] = _choose(name, flag_value, saved_value, log)
        return replace(cls(), **{k: v for k, v in values.items() if v is not None})

    def as_dict(self):
        return asdict(self)


def _choose(name, given, saved, log):
    flag = "--" + name.replace("_", "-")
    if given is None:
        return saved
    if saved is not None and given != saved:
        if name in TrainConfig.MUST_MATCH:
            raise UsageError(
                f"{flag} {given} differs from the checkpoint's {saved}; resuming needs "
                f"the same {flag} (or start a new run with another --checkpoint)"
            )
        if name != "epochs":  # raising --epochs to train further is the normal case
            log(f"note: {flag} changed from {saved} to {given} on resume")
    return given
