"""The command line: every command's flags, made from the config dataclasses
(core/config.py: each field's default, type and help) and, for what is not a
setting of the run (--recipe, --more-epochs, the launcher's flags), from the
small table below. Torch-free, so that --help and a bad flag answer at once.
"""

import argparse
import os
import sys
from dataclasses import fields

from mnist_hogwild.core.config import (
    DATASETS,
    LAST_CALL,
    POSITIVE_INT,
    RECIPES,
    RunOptions,
    TrainConfig,
    int_in,
)

COMMANDS = {
    "train": "train the model (the default: `main.py [flags]` is `main.py train [flags]`)",
    "evaluate": "evaluate a checkpoint on the test set: one line, and JSON with per-class "
    "accuracy and the confusion matrix",
    "infer": "the digit in image files, or in random test images saved as DIGIT.png",
    "export": "the model as one file that plain torch loads (torch.export or TorchScript)",
    "plot": "the training curves of a checkpoint's run (loss and test accuracy per epoch) as "
    "a PNG",
    "serve": "a web page to draw a digit and watch training, and POST /predict (no "
    "authentication: a trusted network only)",
}

# Flags that are not fields of TrainConfig or RunOptions: name -> (help, options).
EXTRA = {
    "recipe": (
        "a named set of the * defaults: sample (pytorch/examples' settings) or fast (Adam, "
        "one-cycle, dropout 0.1, batch 128, 1 epoch: 98%% on MNIST soonest); explicit flags "
        "override it (default: sample)",
        dict(choices=sorted(RECIPES)),
    ),
    "more_epochs": (
        "train N epochs beyond what the checkpoint holds (with --resume; from scratch without "
        "one), instead of up to --epochs (default: up to --epochs)",
        dict(type=POSITIVE_INT, metavar="N"),
    ),
    "cuda": (
        "the same as --device cuda (the pytorch/examples spelling)",
        dict(dest="device", action="store_const", const="cuda"),
    ),
    "nnodes": (
        "how many nodes; MIN:MAX lets the job go on with fewer after a node is lost "
        "(default: one machine, no torchrun)",
        dict(metavar="N|MIN:MAX"),
    ),
    "rdzv_endpoint": (
        "where the nodes meet (c10d rendezvous; hosted by the node whose address it is)",
        dict(metavar="HOST:PORT"),
    ),
    "rdzv_id": (
        "the job's id, the same on every node and new for every job (default: $PET_RDZV_ID, "
        "else mnist-hogwild)",
        dict(metavar="ID"),
    ),
    "rdzv_conf": (
        "c10d rendezvous settings passed to torchrun, e.g. join_timeout=900 (default: "
        f"{LAST_CALL})",
        dict(metavar="K=V,..."),
    ),
    "local_addr": (
        "this node's address as the other nodes reach it (torchrun's --local-addr; default: "
        "its host name)",
        dict(metavar="ADDR"),
    ),
    "verbose": (
        "keep torch's own launcher and rendezvous logs (default: errors as one line)",
        dict(action="store_true"),
    ),
    "max_restarts": (
        "restarts of the whole job after a failure, e.g. a lost node (default: 0); pass "
        "--resume too, so that a restart continues from the checkpoint",
        dict(type=int_in(0, 1000), default=0, metavar="M"),
    ),
}

# The train command's groups, in --help's order: (title, description, flags).
GROUPS = (
    (
        "training (* saved in the checkpoint)",
        None,
        TrainConfig.names() + ["recipe", "more_epochs", "target_accuracy"],
    ),
    (
        "the run",
        None,
        "num_processes threads_per_process test_batch_size log_interval dry_run resume "
        "checkpoint checkpoint_interval data_dir device cuda deterministic".split(),
    ),
    (
        "several machines",
        "run this on every node, the same flags everywhere: it starts torchrun's own elastic "
        "launcher with one leader per node (the plain torchrun command works too)",
        "nnodes rdzv_endpoint rdzv_id rdzv_conf local_addr verbose max_restarts sync_every "
        "node_updates sync_timeout start_timeout".split(),
    ),
)

FIELDS = {f.name: (cls, f) for cls in (TrainConfig, RunOptions) for f in fields(cls)}


def option(name):
    """(help, argparse options) of the flag for NAME (a field or an EXTRA)."""
    if name in EXTRA:
        return EXTRA[name]
    cls, f = FIELDS[name]
    meta, options = f.metadata, dict(f.metadata["options"])
    shown = meta["shown"] or (f"{f.default:g}" if isinstance(f.default, float) else f.default)
    text = meta["help"] if isinstance(f.default, bool) else f"{meta['help']} (default: {shown})"
    if cls is TrainConfig:
        # None means "not given": --resume then takes the checkpoint's value.
        return f"* {text}", options
    if not isinstance(f.default, bool):
        options["default"] = f.default
    return text, options


def add_flag(group, name, help_text=None, **overrides):
    """Add NAME's flag (--kebab-case) to GROUP, its help and options from option()."""
    text, options = option(name)
    group.add_argument(
        "--" + name.replace("_", "-"), help=help_text or text, **options, **overrides
    )


def build_parser():
    """The train command's parser (`main.py [train] [flags]`)."""
    p = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "main.py",
        description="Train the MNIST Net with Hogwild: N processes share one model's "
        "memory. Checkpoints survive SIGINT/SIGTERM/SIGHUP (docker stop); --resume "
        "continues exactly where training stopped. Other commands: "
        + "; ".join(f"{name}: {text}" for name, text in COMMANDS.items() if name != "train")
        + " (main.py COMMAND --help).",
        epilog="With --resume, flags marked * default to the checkpoint's values; "
        "--batch-size, --seed, --dataset and --optimizer must then match the checkpoint.",
        allow_abbrev=False,
    )
    for title, description, names in GROUPS:
        group = p.add_argument_group(title, description)
        for name in names:
            add_flag(group, name)
    return p


def command_parser(name):
    """The parser of command NAME (evaluate, infer or export), with the flags
    they share; each command's module adds its own (add_arguments)."""
    parser = argparse.ArgumentParser(
        prog=f"main.py {name}", description=COMMANDS[name], allow_abbrev=False
    )
    add_flag(
        parser,
        "checkpoint",
        f"the trained model (default: {RunOptions.checkpoint}; STEM.best.pth is the best "
        "epoch's)",
    )
    return parser


def data_dir_flag(parser):
    """--data-dir for a command: the same default as training's."""
    add_flag(parser, "data_dir", f"data root (default: {RunOptions.data_dir})")


def dataset_flag(parser, help_text):
    parser.add_argument("--dataset", choices=DATASETS, help=help_text)
