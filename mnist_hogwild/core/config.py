"""The run's settings: TrainConfig (what is trained, saved in the checkpoint and
resolved against it on resume) and RunOptions (how this run goes about it).

Torch-free, so that main.py can build its flags (and answer --help) before
torch is imported; the workers receive the resolved TrainConfig as it is.
"""

import argparse
from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar

from mnist_hogwild.core.errors import UsageError

MNIST, FASHION_MNIST = "mnist", "fashion-mnist"
DATASETS = (MNIST, FASHION_MNIST)
# The names the flags offer (torch-free); what each does is learn/optim.py's
# OPTIMIZERS and learn/schedule.py's SHAPES, keyed by the same names.
OPTIMIZERS = ("sgd", "adam")
# --lr-schedule NAME -> its default --warmup (onecycle: torch's OneCycleLR pct_start).
LR_SCHEDULES = {"constant": 0.0, "onecycle": 0.3, "cosine": 0.0}
NODE_UPDATES = ("sum", "average")

# --recipe: named sets of TrainConfig defaults; flags given explicitly still win.
# "sample" is pytorch/examples' mnist_hogwild (the course's). "fast" reaches 98%
# on MNIST in the fewest seconds measured here (docs/performance.md has the
# table; `python scripts/benchmark.py --time-to-accuracy` regenerates it).
# Batches of 128, not 64: with several Hogwild processes, half as many
# updates, each from a less noisy gradient, kept every measured seed on
# course, where at 64 some runs stalled near 97%.
RECIPES = {
    "sample": {},
    "fast": {
        "optimizer": "adam",
        "lr": 0.005,
        "lr_schedule": "onecycle",
        "epochs": 3,
        "batch_size": 128,
    },
}


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
    optimizer: str = "sgd"
    lr_schedule: str = "constant"
    warmup: float = 0.0  # share of the planned batches with a rising rate (onecycle: its peak)

    # These fix which batches make up an epoch and what the optimizer state
    # means, so they must match the checkpoint on resume; lr, momentum, the
    # schedule and epochs may be changed on purpose.
    MUST_MATCH: ClassVar[tuple] = ("batch_size", "seed", "dataset", "optimizer")

    @classmethod
    def names(cls):
        return [f.name for f in fields(cls)]

    @classmethod
    def resolve(cls, flags, saved=None, log=print):
        """The config from FLAGS (an argparse namespace or dict; None = not
        given), the --recipe they name, and SAVED (the checkpoint's config
        dict, or None for a fresh run).

        Raises UsageError when a flag contradicts a MUST_MATCH field."""
        given = dict(flags if isinstance(flags, dict) else vars(flags))
        recipe = RECIPES[given.get("recipe") or "sample"]
        if saved is None:
            base = {**cls().as_dict(), **recipe}
            if "warmup" not in recipe:
                base["warmup"] = LR_SCHEDULES[given.get("lr_schedule") or base["lr_schedule"]]
            values = {n: base[n] if given.get(n) is None else given[n] for n in cls.names()}
        else:
            values = {n: _choose(n, given.get(n), saved.get(n), log) for n in cls.names()}
            values = {n: cls().as_dict()[n] if v is None else v for n, v in values.items()}
        return replace(cls(), **values)

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


@dataclass(frozen=True)
class RunOptions:
    """How this run trains (none of it changes what is learnt, but for
    target_accuracy, which only ends it sooner). Saved in the checkpoint for
    the record; never resolved against it."""

    num_processes: int = 2
    threads_per_process: int = 0  # 0: usable CPUs // processes
    log_interval: int = 10
    test_batch_size: int = 500
    checkpoint: str = "model_checkpoint.pth"
    checkpoint_interval: float = 30.0
    data_dir: str = "./data"
    device: str = "auto"
    deterministic: bool = False
    dry_run: bool = False
    resume: bool = False
    target_accuracy: float = 0.0  # 0: train every epoch
    sync_every: int = 0  # 0: auto (node.Cadence)
    node_updates: str = "sum"
    sync_timeout: float = 30.0
    start_timeout: float = 300.0

    @classmethod
    def from_args(cls, args):
        given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        values = {f.name: given[f.name] for f in fields(cls) if given.get(f.name) is not None}
        return cls(**values)

    def as_dict(self):
        return asdict(self)
