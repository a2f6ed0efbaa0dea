"""The run's settings: TrainConfig (what is trained, saved in the checkpoint and
resolved against it on resume) and RunOptions (how this run goes about it).

Torch-free, so that main.py can build its flags (and answer --help) before
torch is imported; the workers receive the resolved TrainConfig as it is.
"""

import argparse
from dataclasses import asdict, dataclass, field, fields, replace
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
DEVICES = ("auto", "cpu", "cuda")
# --rdzv-conf's default: see cluster/launcher.py.
LAST_CALL = "last_call_timeout=5"
MAX_PROCESSES, MAX_THREADS = 512, 1024  # beyond these, thread or process creation fails


def int_in(low, high):
    """An argparse type: a whole number in [LOW, HIGH]."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    return parse


def float_in(low, high, low_ok, what):
    """An argparse type: a float in (LOW, HIGH), LOW itself allowed if LOW_OK."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low <= value if low_ok else low < value) or not value < high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


POSITIVE_INT = int_in(1, 2**31 - 1)
POSITIVE_FLOAT = float_in(0, float("inf"), False, "more than 0")
NON_NEGATIVE_FLOAT = float_in(0, float("inf"), True, "0 or more")
UNIT_FRACTION = float_in(0, 1, True, "in [0, 1)")


def target_percent(text):
    """--target-accuracy: a percentage in (1, 100]. A fraction such as 0.98
    (as many libraries write accuracy) is refused, naming the percentage
    meant: read as a percentage it would end a run at under 1%."""
    value = float_in(0, float("inf"), False, "a percentage in (1, 100]")(text)
    if value <= 1:
        raise argparse.ArgumentTypeError(
            f"is a percentage, and {text} looks like a fraction: for {100 * value:g}% pass "
            f"{100 * value:g}"
        )
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be a percentage in (1, 100], got {text}")
    return value


def adam_betas(text):
    """--betas: Adam's two decay rates, B1,B2, with 0 <= B1 < 1, 0 < B2 < 1 and
    B1^2 < B2 (the bound learn/optim.py's racy-step floor is made from)."""
    try:
        b1, b2 = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers B1,B2, got {text!r}") from None
    if not (0 <= b1 < 1 and 0 < b2 < 1 and b1 * b1 < b2):
        raise argparse.ArgumentTypeError(
            f"must have 0 <= B1 < 1, 0 < B2 < 1 and B1^2 < B2, got {text}"
        )
    return (b1, b2)


def sync_every_batches(text):
    """--sync-every: a whole number of batches, or "auto" (0)."""
    return 0 if text == "auto" else POSITIVE_INT(text)


def flag(default, help, shown=None, **argparse_options):
    """A dataclass field that is also a command-line flag: its help text, what
    "(default: ...)" shows (SHOWN, else DEFAULT) and argparse's options."""
    return field(default=default, metadata=dict(help=help, shown=shown, options=argparse_options))


# --recipe: named sets of TrainConfig defaults; flags given explicitly still win.
# "sample" is pytorch/examples' mnist_hogwild (the course's). "fast" reaches 98%
# on MNIST after one epoch (docs/performance.md has the measurements;
# `python scripts/benchmark.py --time-to-accuracy` reruns them). What made one
# epoch enough, measured one change at a time: dropout 0.1 instead of the
# network's 0.5 (the largest gain: one epoch is too short to overfit), and
# Adam's betas 0.7/0.9, whose shorter memory follows the one-cycle rate within
# the epoch, and keeps eight racing processes on course. Batches of 128, not
# 64: with several Hogwild processes, half as many updates, each from a less
# noisy gradient. A peak rate of 0.01 was slightly better at two processes,
# but at eight processes on two cores (each update computed from weights up
# to seven updates old) it killed the network in some runs; 0.005 stays clear.
RECIPES = {
    "sample": {},
    "fast": {
        "optimizer": "adam",
        "lr": 0.005,
        "betas": (0.7, 0.9),
        "dropout": 0.1,
        "lr_schedule": "onecycle",
        "epochs": 1,
        "batch_size": 128,
    },
}


@dataclass(frozen=True)
class TrainConfig:
    """What defines the training itself. The flags for these fields default to
    None in argparse, so that --resume can tell "not given" (take the
    checkpoint's value) from "given" (check it, or override it). Each field's
    flag is made from its metadata (commands/flags.py); "{default}" in a help
    text is the field's default."""

    batch_size: int = flag(64, "input batch size for training", type=POSITIVE_INT, metavar="N")
    epochs: int = flag(10, "number of epochs to train in total", type=POSITIVE_INT, metavar="N")
    lr: float = flag(
        0.01, "learning rate; the peak rate of a schedule", type=POSITIVE_FLOAT, metavar="LR"
    )
    momentum: float = flag(0.5, "SGD momentum", type=UNIT_FRACTION, metavar="M")
    betas: tuple = flag(
        (0.9, 0.999),
        "Adam's decay rates of its two moments",
        shown="0.9,0.999",
        type=adam_betas,
        metavar="B1,B2",
    )
    dropout: float = flag(
        0.5, "dropout rate of the network's two dropout layers", type=UNIT_FRACTION, metavar="P"
    )
    seed: int = flag(1, "random seed", type=int_in(0, 2**63 - 1), metavar="S")
    dataset: str = flag(MNIST, "which data set", choices=DATASETS)
    optimizer: str = flag("sgd", "sgd (with --momentum, the sample's) or adam", choices=OPTIMIZERS)
    lr_schedule: str = flag(
        "constant",
        "the learning rate over the planned batches: constant, onecycle (up to --lr over the "
        "warm-up, then cosine down) or cosine (down to 0)",
        choices=LR_SCHEDULES,
    )
    # The share of the planned batches with a rising rate (onecycle: up to its peak).
    warmup: float = flag(
        0.0,
        "share of the planned batches over which the rate rises",
        shown=", ".join(f"{v:g} with {k}" for k, v in LR_SCHEDULES.items() if v) + ", else 0",
        type=UNIT_FRACTION,
        metavar="F",
    )

    # These fix which batches make up an epoch and what the optimizer state
    # means, so they must match the checkpoint on resume; lr, momentum, betas,
    # dropout, the schedule and epochs may be changed on purpose.
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
    the record; never resolved against it. The flags default to these values."""

    num_processes: int = flag(
        2, "how many training processes to use", type=int_in(1, MAX_PROCESSES), metavar="N"
    )
    threads_per_process: int = flag(
        0,  # 0: usable CPUs // processes
        "torch threads in each process",
        shown="usable CPUs // processes, at least 1; usable CPUs honour affinity and cgroup quota",
        type=int_in(1, MAX_THREADS),
        metavar="N",
    )
    test_batch_size: int = flag(
        500,
        "input batch size for testing; above 1000 it is evaluated 1000 at a time, so memory "
        "stays bounded",
        type=POSITIVE_INT,
        metavar="N",
    )
    log_interval: int = flag(
        10,
        "how many batches to wait before logging training status",
        type=POSITIVE_INT,
        metavar="N",
    )
    dry_run: bool = flag(
        False,
        "train one batch per worker, then evaluate and checkpoint (smoke test; an existing "
        "checkpoint is never replaced)",
        action="store_true",
    )
    resume: bool = flag(
        False,
        "continue from --checkpoint if it exists (else warn and start fresh); without it, an "
        "existing checkpoint is kept as STEM.prev.pth",
        action="store_true",
    )
    checkpoint: str = flag(
        "model_checkpoint.pth",
        "checkpoint file; beside it go STEM.metrics.jsonl and STEM.best.pth",
        metavar="PATH",
    )
    checkpoint_interval: float = flag(
        30.0,
        "also save every SECONDS while training; 0 disables",
        type=NON_NEGATIVE_FLOAT,
        metavar="SECONDS",
    )
    data_dir: str = flag(
        "./data",
        "data root, torchvision layout DIR/MNIST/raw, DIR/FashionMNIST/raw; files may be "
        "gzipped or unpacked",
        metavar="DIR",
    )
    device: str = flag(
        "auto",
        "where to train: auto picks cuda when torch sees a GPU, else cpu; cuda without a "
        "usable GPU is an error",
        choices=DEVICES,
    )
    deterministic: bool = flag(
        False,
        "use only deterministic algorithms (torch.use_deterministic_algorithms; on a GPU also "
        "CUBLAS_WORKSPACE_CONFIG=:4096:8), for bitwise-exact resume on a GPU",
        action="store_true",
    )
    target_accuracy: float = flag(
        0.0,  # 0: train every epoch
        "stop (saved, exit 0) after the first epoch whose test accuracy reaches PERCENT, a "
        "percentage such as 98 (0.98 is refused as a fraction)",
        shown="train every epoch",
        type=target_percent,
        metavar="PERCENT",
    )
    sync_every: int = flag(
        0,  # 0: auto (cluster/cadence.py)
        "combine the nodes' models every K batches per node (the sum travels while the "
        "workers train on), and at every epoch end; auto: adapt K at each sync so that syncs "
        "take about 5%% of the training time, never beyond the K measured safe for accuracy at "
        "this node count, nor below 10 unless that K is smaller",
        shown="auto",
        type=sync_every_batches,
        metavar="K",
    )
    node_updates: str = flag(
        "sum",
        "at a sync, add up what each node changed since the last sync (sum: every update "
        "counts, as in Hogwild; for small K) or take the mean of the models (average: local "
        "SGD, stable for any K, but it divides the step per sample by the node count)",
        choices=NODE_UPDATES,
    )
    sync_timeout: float = flag(
        30.0,
        "how long a sync waits for the other nodes before this node gives up with an error",
        type=POSITIVE_FLOAT,
        metavar="SECONDS",
    )
    start_timeout: float = flag(
        300.0,
        "how long start-up (joining, data download, CUDA start, the checkpoint agreement) "
        "waits for the other nodes",
        type=POSITIVE_FLOAT,
        metavar="SECONDS",
    )

    @classmethod
    def from_args(cls, args):
        given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        values = {f.name: given[f.name] for f in fields(cls) if given.get(f.name) is not None}
        return cls(**values)

    def as_dict(self):
        return asdict(self)
