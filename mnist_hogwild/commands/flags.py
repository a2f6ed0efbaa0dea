"""The command line: every command's flags, in one torch-free module, so that
--help and a bad flag answer at once (the command's own module, and torch,
are imported only when it runs).

The train command's flags are made from the settings dataclasses
(core/config.py: each field's default, kind and help, written once); the
flags become settings here, once (settings()), and nothing below main.py
sees the argparse namespace.
"""

import argparse
import os
import sys
from dataclasses import dataclass, field, fields

from mnist_hogwild.core.config import (
    ConfigRequest,
    LaunchOptions,
    RunOptions,
    TrainConfig,
    Whole,
)
from mnist_hogwild.core.tables import DATASETS


@dataclass(frozen=True)
class Command:
    """A command of main.py: its NAME, its help line, FLAGS(parser) adds its
    flags (beside --checkpoint, which every command on a model has), and RUN
    names its function as "module:function", imported only when it runs (so
    that --help and a bad flag answer before torch loads). Everything else
    (main.py's dispatch, --help, the container's entrypoint and README's
    reference) reads COMMANDS: adding a command is one entry."""

    name: str
    help: str
    flags: object = field(default=lambda parser: None, repr=False)
    run: str = ""  # (train, the default command, is main.py's own)


EXPORT_FORMATS = ("pt2", "torchscript")

# (in --help's order within each group: the launcher's flags before the syncs')
SETTINGS = (TrainConfig, ConfigRequest, LaunchOptions, RunOptions)
# The train command's --help groups, in order: name -> (title, description).
# A field is listed in its flag()'s group, else in its class's (CLASS_GROUPS).
GROUPS = {
    "training": ("training (* saved in the checkpoint)", None),
    "run": ("the run", None),
    "machines": (
        "several machines",
        "run this on every node, the same flags everywhere: it starts torchrun's own elastic "
        "launcher with one leader per node (the plain torchrun command works too)",
    ),
}
CLASS_GROUPS = {
    TrainConfig: "training",
    ConfigRequest: "training",
    RunOptions: "run",
    LaunchOptions: "machines",
}


def group_fields(settings=SETTINGS):
    """{group: [(class, field), ...]} of every flag of SETTINGS' classes (or
    their subclasses)."""
    groups = {name: [] for name in GROUPS}
    for cls in settings:
        own = next(g for base, g in CLASS_GROUPS.items() if issubclass(cls, base))
        for f in fields(cls):
            if "kind" in f.metadata:
                groups[f.metadata["group"] or own].append((cls, f))
    return groups


def flag_name(name):
    return "--" + name.replace("_", "-")


def add_field_flag(group, cls, f, environ=os.environ):
    """Add the flag of dataclass field F (of CLS) to GROUP: its kind's type or
    choices, its help with the default, its argparse default."""
    meta = {k: v() if callable(v) else v for k, v in f.metadata.items() if k != "kind"}
    options = {**f.metadata["kind"].argparse_options(), **meta["options"]}
    shown = meta["shown"]
    if issubclass(cls, TrainConfig):
        # None means "not given": --resume then takes the checkpoint's value.
        shown = shown or (f"{f.default:g}" if isinstance(f.default, float) else f.default)
        text = f"* {meta['help']} (default: {shown})"
    else:
        options["default"] = (meta["env"] and environ.get(meta["env"])) or f.default
        if meta["env"] and not meta["shown"]:
            shown = f"${meta['env']}, else %(default)s"
        elif isinstance(f.default, float) and not shown:
            shown = f"{f.default:g}"  # 30, not 30.0
        text = (
            meta["help"]
            if f.default is False
            else f"{meta['help']} (default: {shown or '%(default)s'})"
        )
    group.add_argument(flag_name(f.name), help=text, **options)


def add_cuda_flag(group):
    group.add_argument(
        "--cuda",
        dest="device",
        action="store_const",
        const="cuda",
        help="the same as --device cuda (the pytorch/examples spelling)",
    )


def build_parser(settings=SETTINGS):
    """The train command's parser (`main.py [train] [flags]`): a flag for
    every field of SETTINGS' classes, in its group."""
    p = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "main.py",
        description="Train the MNIST Net (model.py) with Hogwild: N processes share one "
        "model's memory. Checkpoints survive SIGINT/SIGTERM/SIGHUP (docker stop); --resume "
        "continues exactly where training stopped. Other commands: "
        + "; ".join(f"{c.name}: {c.help}" for c in COMMANDS.values() if c.name != "train")
        + " (main.py COMMAND --help).",
        epilog="With --resume, flags marked * default to the checkpoint's values; "
        "--batch-size, --seed, --dataset and --optimizer must then match the checkpoint.",
        allow_abbrev=False,
    )
    for name, members in group_fields(settings).items():
        group = p.add_argument_group(*GROUPS[name])
        for cls, f in members:
            add_field_flag(group, cls, f)
            if f.name == "device":
                add_cuda_flag(group)
    return p


def settings(args):
    """The train flags as settings: (ConfigRequest, RunOptions, LaunchOptions)."""
    given = vars(args)
    return (
        ConfigRequest.from_flags(given),
        RunOptions.from_flags(given),
        LaunchOptions.from_flags(given),
    )


def leader_argv(argv):
    """ARGV without the launch flags (LaunchOptions' fields, with their values):
    what each node's leader gets."""
    launch = {flag_name(f.name): f.default is not False for f in fields(LaunchOptions)}
    out, skip = [], False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif name in launch:
            skip = launch[name] and "=" not in arg  # the value follows as the next word
        else:
            out.append(arg)
    return out


# ----- the commands on a trained checkpoint ---------------------------------
def command_parser(name):
    """The parser of command NAME (evaluate, infer, export, plot or serve)."""
    parser = argparse.ArgumentParser(
        prog=f"main.py {name}", description=COMMANDS[name].help, allow_abbrev=False
    )
    parser.add_argument(
        "--checkpoint",
        default=RunOptions.checkpoint,
        metavar="PATH",
        help="the trained model (default: %(default)s; STEM.best.pth is the best epoch's, "
        "STEM.models/NAME any kept model)",
    )
    COMMANDS[name].flags(parser)
    return parser


def data_dir_flag(p):
    """--data-dir for a command: the same default as training's."""
    p.add_argument(
        "--data-dir",
        default=RunOptions.data_dir,
        metavar="DIR",
        help="data root (default: %(default)s)",
    )


def evaluate_flags(p):
    data_dir_flag(p)
    p.add_argument(
        "--dataset",
        choices=tuple(DATASETS),
        help="the test set to use; must be the one the model was trained on (default: the "
        "checkpoint's)",
    )
    p.add_argument(
        "--test-batch-size",
        "--batch-size",  # (its earlier name, kept: in train it means the training batch)
        dest="test_batch_size",
        type=Whole(1).parse_flag,
        default=RunOptions.test_batch_size,
        metavar="N",
        help="images evaluated at a time (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        default="eval_results.json",
        metavar="FILE",
        help="where the metrics go, as JSON (default: %(default)s)",
    )
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw the confusion matrix as a PNG, with each class's accuracy (default: no "
        "picture)",
    )


def infer_flags(p):
    p.add_argument(
        "images", nargs="*", metavar="IMAGE", help="image files to classify (default: test images)"
    )
    p.add_argument(
        "--num-samples",
        type=Whole(1).parse_flag,
        default=5,
        metavar="N",
        help="without IMAGE: how many random test images (default: %(default)s)",
    )
    p.add_argument(
        "--out-dir",
        default="results",
        metavar="DIR",
        help="without IMAGE: where the PNGs go, named DIGIT.png, then DIGIT-2.png, DIGIT-3.png "
        "... when several share a digit (default: %(default)s)",
    )
    p.add_argument(
        "--sample-seed",
        "--seed",  # (its earlier name, kept: in train it means the training seed)
        dest="sample_seed",
        type=Whole(0, 2**63 - 1).parse_flag,
        default=0,
        metavar="S",
        help="without IMAGE: which random test images (default: %(default)s)",
    )
    p.add_argument(
        "--show",
        metavar="DIR",
        help="with IMAGE: also write what the model saw, its 28x28 input enlarged with the "
        "answer, as DIR/NAME.seen.png (default: write nothing)",
    )
    data_dir_flag(p)


def export_flags(p):
    p.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="pt2",
        help="pt2: torch.export (torch.export.load); torchscript: torch.jit.load "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="(default: the checkpoint's name, .pt2 or .pt; STEM.export.pt where that is the "
        "checkpoint itself; beside STEM.models/ for a model in it)",
    )


def plot_flags(p):
    p.add_argument(
        "--out",
        default="curves.png",
        metavar="FILE",
        help="the PNG to write (default: %(default)s)",
    )


def in_container():
    """Running in this project's image (its Dockerfile sets the variable)."""
    return bool(os.environ.get("MNIST_HOGWILD_IMAGE"))


def serve_flags(p):
    host = "0.0.0.0" if in_container() else "127.0.0.1"
    p.add_argument(
        "--host",
        default=host,
        help="the address to listen on (default: 127.0.0.1, and 0.0.0.0 in a container, "
        f"so that docker run -p reaches it: here {host})",
    )
    p.add_argument(
        "--port",
        type=Whole(1, 65535).parse_flag,
        default=8000,
        metavar="PORT",
        help="(default: %(default)s)",
    )
    p.add_argument(
        "--max-batch",
        type=Whole(1, 1024).parse_flag,
        default=64,
        metavar="N",
        help="predictions of concurrent requests made in one forward pass, at most N; "
        "1: one pass per request (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=Whole(1, 64).parse_flag,
        default=None,
        metavar="N",
        help="processes that read images and run the model, besides one for images over "
        "8 MB decoded (default: the usable cores, at most 4)",
    )


COMMANDS = {
    c.name: c
    for c in (
        Command(
            "train", "train the model (the default: `main.py [flags]` is `main.py train [flags]`)"
        ),
        Command(
            "evaluate",
            "evaluate a checkpoint on the test set: one line, and JSON with per-class accuracy "
            "and the confusion matrix",
            evaluate_flags,
            "mnist_hogwild.commands.evaluate:run_command",
        ),
        Command(
            "infer",
            "the digit in image files, or in random test images saved as DIGIT.png",
            infer_flags,
            "mnist_hogwild.commands.infer:run_command",
        ),
        Command(
            "export",
            "the model as one file that plain torch loads (torch.export or TorchScript)",
            export_flags,
            "mnist_hogwild.commands.export:run_command",
        ),
        Command(
            "plot",
            "the training curves of a checkpoint's run (loss and accuracy per epoch) as a PNG",
            plot_flags,
            "mnist_hogwild.commands.plot:run_command",
        ),
        Command(
            "serve",
            "a web page to draw or upload a digit and watch training, and POST /predict (no "
            "authentication: a trusted network only)",
            serve_flags,
            "mnist_hogwild.commands.serve:run_command",
        ),
        Command(
            "models",
            "the models kept beside a checkpoint (STEM.models/): name, split judged on, epoch, "
            "accuracy, when written",
            run="mnist_hogwild.commands.models:run_command",
        ),
    )
}
