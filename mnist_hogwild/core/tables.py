"""One table per extension point of training: data sets, optimizers,
learning-rate schedules and recipes (the commands' table is
commands/flags.py's COMMANDS). Each entry holds everything the rest of the
program needs to know about its thing, and everything else reads the table:
the flags and --help, the README's reference, the start line, the process
count's adaptation, the collapse checks, the plots and the exported metadata.
Adding one is one entry here (an optimizer also needs its class, named by
`cls`; tests/test_tables.py registers a made-up entry of each kind).

Torch-free, so that --help answers before torch loads: an entry names what
needs torch as "module:attribute", imported only when it is used (the form
of Python's entry points).
"""

import importlib
import math
from dataclasses import dataclass, field


def load(reference):
    """The object that REFERENCE ("package.module:attribute") names."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


# ----- data sets -------------------------------------------------------------
@dataclass(frozen=True)
class DataSet:
    """A data set in MNIST's IDX format: 10 classes of 28x28 grey images."""

    name: str
    help: str
    folder: str  # DIR/FOLDER/raw (torchvision's layout, so its downloads are reused)
    mirrors: tuple  # where its .gz files are downloaded from, tried in order
    md5: dict  # file name -> MD5 of the .gz
    mean: float  # the normalisation: (pixel / 255 - mean) / std
    std: float
    classes: tuple  # the names of the classes, in label order
    class_word: str = "class"  # what one class is called ("digit")
    # How a user's image becomes a 28x28 input: "digit" finds the ink and
    # centres it by mass in 20x20 as MNIST's were made; "picture" only turns
    # it grey, light on dark, and resizes it.
    preparation: str = "picture"


_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# (Fashion-MNIST's class names are its README's.)
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt")
_FASHION_CLASSES += ("Sneaker", "Bag", "Ankle boot")

DATASETS = {
    d.name: d
    for d in (
        DataSet(
            "mnist",
            "handwritten digits",
            "MNIST",
            ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
            _MNIST_MD5,
            0.1307,
            0.3081,
            tuple(str(d) for d in range(10)),
            class_word="digit",
            preparation="digit",
        ),
        DataSet(
            "fashion-mnist",
            "Zalando's clothing pictures",
            "FashionMNIST",
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            _FASHION_MD5,
            0.2860,
            0.3530,
            _FASHION_CLASSES,
        ),
    )
}


# ----- optimizers --------------------------------------------------------------
@dataclass(frozen=True)
class Optimizer:
    """An optimizer: its class (learn/optimizers.py, by reference), the
    settings it reads besides the rate, the peak rate this project's recipes
    use with it (the collapse checks compare a run's rate with it), and what
    the process-count adaptation does to its momentum (hogwild/adapt.py):
    CALM takes a config and returns ({setting: value}, note) that turns its
    momentum off, or None when it has none to turn off."""

    name: str
    help: str
    cls: str
    settings: tuple
    usual_lr: float
    calm: object = field(default=lambda config: None, repr=False)


def _no_momentum(config):
    if not config.momentum:
        return None
    return {"momentum": 0.0}, f"--momentum {config.momentum:g} -> 0"


def _no_first_moment(config):
    b1, b2 = config.betas
    return ({"betas": (0.0, b2)}, f"beta1 {b1:g} -> 0") if b1 else None


OPTIMIZERS = {
    o.name: o
    for o in (
        Optimizer(
            "sgd",
            "with --momentum, the sample's",
            "mnist_hogwild.learn.optimizers:MomentumSGD",
            ("momentum",),
            0.01,
            _no_momentum,
        ),
        Optimizer(
            "adam",
            "with --betas",
            "mnist_hogwild.learn.optimizers:Adam",
            ("betas",),
            0.005,
            _no_first_moment,
        ),
    )
}


def unused_settings(optimizer):
    """The optimizer settings that OPTIMIZER does not read (a change of them on
    resume is no news)."""
    every = {s for o in OPTIMIZERS.values() for s in o.settings}
    return every - set(OPTIMIZERS[optimizer].settings)


# ----- learning-rate schedules --------------------------------------------------
def _cosine(fraction):
    """1 at 0, falling along half a cosine to 0 at 1."""
    return (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0))) / 2


def _after_warmup(shape):
    """A schedule with a linear warm-up from 0 over the first WARMUP share of
    the batches, then SHAPE(peak, fraction of the rest)."""

    def rate(peak, warmup, position, batch, total):
        if position < warmup:
            return peak * (batch + 1) / (warmup * total)
        return shape(peak, (position - warmup) / (1 - warmup))

    return rate


def _one_cycle(peak, warmup, position, batch, total):
    """Linear from peak/25 up to peak over the warm-up share, then cosine down
    to peak/10^4 (torch's OneCycleLR's shape and defaults)."""
    start, end = peak / 25, peak / 25 / 1e4
    if position < warmup:
        return start + (peak - start) * position / warmup
    return end + (peak - end) * _cosine((position - warmup) / (1 - warmup))


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: SHAPE(peak, warmup, position in [0, 1),
    batch, total batches) -> rate, and its default --warmup."""

    name: str
    help: str
    shape: object = field(repr=False)
    warmup: float = 0.0


SCHEDULES = {
    s.name: s
    for s in (
        Schedule("constant", "the rate of --lr throughout", _after_warmup(lambda p, f: p)),
        Schedule("onecycle", "up to --lr over the warm-up, then cosine down", _one_cycle, 0.3),
        Schedule("cosine", "down to 0", _after_warmup(lambda p, f: p * _cosine(f))),
    )
}


# ----- recipes -------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """A named set of the training settings' defaults; flags given explicitly
    still win."""

    name: str
    help: str
    values: dict


# "sample" is pytorch/examples' mnist_hogwild (the course's). "fast" reaches 98%
# on MNIST after one epoch (docs/performance.md has the measurements;
# `python scripts/time_to_accuracy.py` reruns them). What made one epoch
# enough, measured one change at a time: dropout 0.1 instead of the network's
# 0.5 (the largest gain: one epoch is too short to overfit), and Adam's betas
# 0.7/0.9, whose shorter memory follows the one-cycle rate within the epoch,
# and keeps eight racing processes on course. Batches of 128, not 64: with
# several Hogwild processes, half as many updates, each from a less noisy
# gradient. A higher peak rate was slightly better at two processes, but at
# eight processes on two cores (each update computed from weights up to seven
# updates old) it killed the network in some runs; the one below stays clear.
RECIPES = {
    r.name: r
    for r in (
        Recipe("sample", "pytorch/examples' settings", {}),
        Recipe(
            "fast",
            "Adam, one-cycle, dropout 0.1, batch 128, 1 epoch: 98%% on MNIST soonest",
            {
                "optimizer": "adam",
                "lr": OPTIMIZERS["adam"].usual_lr,
                "betas": (0.7, 0.9),
                "dropout": 0.1,
                "lr_schedule": "onecycle",
                "epochs": 1,
                "batch_size": 128,
            },
        ),
    )
}


def choices_help(table):
    """'a (what a is), b (what b is) or c (...)': a flag's choices, from TABLE."""
    named = [f"{name} ({entry.help})" for name, entry in table.items()]
    return ", ".join(named[:-1]) + " or " + named[-1] if len(named) > 1 else named[0]
