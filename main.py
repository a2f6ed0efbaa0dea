"""mnist-hogwild: train an MNIST classifier on every CPU core with Hogwild.

Command line and start-up. The parent's training loop is in trainer.py, the
workers' in worker.py, the network in model.py; README lists every module.
"""

import argparse
import importlib
import os
import sys
import time

from mnist_hogwild.cluster import launcher
from mnist_hogwild.hogwild import pool
from mnist_hogwild.core import processes
from mnist_hogwild.core.config import DATASETS, LR_SCHEDULES, OPTIMIZERS, RECIPES, TrainConfig
from mnist_hogwild.core.errors import CheckpointError, DataError, InputError, UsageError
from mnist_hogwild.core.loglines import say
from mnist_hogwild.core.processes import exit_now
from mnist_hogwild.hogwild.signals import StopRequest


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


positive_int = int_in(1, 2**31 - 1)


def sync_every(text):
    """--sync-every: a whole number of batches, or "auto" (0)."""
    return 0 if text == "auto" else positive_int(text)


positive_float = float_in(0, float("inf"), False, "more than 0")
non_negative_float = float_in(0, float("inf"), True, "0 or more")
unit_fraction = float_in(0, 1, True, "in [0, 1)")
percent = float_in(0, 100, False, "a percentage in (0, 100]")
MAX_PROCESSES, MAX_THREADS = 512, 1024  # beyond these, thread or process creation fails


def build_parser():
    d = TrainConfig().as_dict()
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
    train = p.add_argument_group("training (* saved in the checkpoint)")
    train.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help=f"* input batch size for training (default: {d['batch_size']})",
    )
    train.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help=f"* number of epochs to train in total (default: {d['epochs']})",
    )
    train.add_argument(
        "--lr",
        type=positive_float,
        metavar="LR",
        help=f"* learning rate; the peak rate of a schedule (default: {d['lr']})",
    )
    train.add_argument(
        "--momentum",
        type=unit_fraction,
        metavar="M",
        help=f"* SGD momentum (default: {d['momentum']})",
    )
    train.add_argument(
        "--seed",
        type=int_in(0, 2**63 - 1),
        metavar="S",
        help=f"* random seed (default: {d['seed']})",
    )
    train.add_argument(
        "--dataset", choices=DATASETS, help=f"* which data set (default: {d['dataset']})"
    )
    train.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help=f"* sgd (with --momentum, the sample's) or adam (default: {d['optimizer']})",
    )
    train.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="* the learning rate over the planned batches: constant, onecycle (up to --lr "
        "over the warm-up, then cosine down) or cosine (down to 0) (default: "
        f"{d['lr_schedule']})",
    )
    train.add_argument(
        "--warmup",
        type=unit_fraction,
        metavar="F",
        help="* share of the planned batches over which the rate rises (default: 0.3 "
        "with onecycle, else 0)",
    )
    train.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="a named set of the * defaults: sample (pytorch/examples' settings) or fast "
        "(Adam, one-cycle, batch 128, 3 epochs: 98%% on MNIST soonest); explicit flags "
        "override it (default: sample)",
    )
    train.add_argument(
        "--more-epochs",
        type=positive_int,
        metavar="N",
        help="train N epochs beyond what the checkpoint holds (with --resume; from scratch "
        "without one), instead of up to --epochs (default: up to --epochs)",
    )
    train.add_argument(
        "--target-accuracy",
        type=percent,
        metavar="PERCENT",
        help="stop (saved, exit 0) after the first epoch whose test accuracy reaches "
        "PERCENT (default: train every epoch)",
    )
    run = p.add_argument_group("the run")
    run.add_argument(
        "--num-processes",
        type=int_in(1, MAX_PROCESSES),
        default=2,
        metavar="N",
        help="how many training processes to use (default: 2)",
    )
    run.add_argument(
        "--threads-per-process",
        type=int_in(1, MAX_THREADS),
        metavar="N",
        help="torch threads in each process (default: usable CPUs // "
        "processes, at least 1; usable CPUs honour affinity and cgroup quota)",
    )
    run.add_argument(
        "--test-batch-size",
        type=positive_int,
        default=500,
        metavar="N",
        help="input batch size for testing; above 1000 it is evaluated 1000 at a time, so "
        "memory stays bounded (default: 500)",
    )
    run.add_argument(
        "--log-interval",
        type=positive_int,
        default=10,
        metavar="N",
        help="how many batches to wait before logging training status (default: 10)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="train one batch per worker, then evaluate and checkpoint (smoke test; "
        "an existing checkpoint is never replaced)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint if it exists (else warn and start fresh); "
        "without it, an existing checkpoint is kept as STEM.prev.pth",
    )
    run.add_argument(
        "--checkpoint",
        default="model_checkpoint.pth",
        metavar="PATH",
        help="checkpoint file; beside it go STEM.metrics.jsonl and STEM.best.pth "
        "(default: model_checkpoint.pth)",
    )
    run.add_argument(
        "--checkpoint-interval",
        type=non_negative_float,
        default=30.0,
        metavar="SECONDS",
        help="also save every SECONDS while training; 0 disables (default: 30)",
    )
    run.add_argument(
        "--data-dir",
        default="./data",
        metavar="DIR",
        help="data root, torchvision layout DIR/MNIST/raw, DIR/FashionMNIST/raw; "
        "files may be gzipped or unpacked (default: ./data)",
    )
    run.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to train: auto picks cuda when torch sees a GPU, else cpu; cuda "
        "without a usable GPU is an error (default: auto)",
    )
    run.add_argument(
        "--cuda",
        dest="device",
        action="store_const",
        const="cuda",
        help="the same as --device cuda (the pytorch/examples spelling)",
    )
    run.add_argument(
        "--deterministic",
        action="store_true",
        help="use only deterministic algorithms (torch.use_deterministic_algorithms; on a "
        "GPU also CUBLAS_WORKSPACE_CONFIG=:4096:8), for bitwise-exact resume on a GPU",
    )
    nodes = p.add_argument_group(
        "several machines",
        "run this on every node, the same flags everywhere: it starts torchrun's own "
        "elastic launcher with one leader per node (the plain torchrun command works too)",
    )
    nodes.add_argument(
        "--nnodes",
        metavar="N|MIN:MAX",
        help="how many nodes; MIN:MAX lets the job go on with fewer after a node is lost "
        "(default: one machine, no torchrun)",
    )
    nodes.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="where the nodes meet (c10d rendezvous; hosted by the node whose address it is)",
    )
    nodes.add_argument(
        "--rdzv-id",
        metavar="ID",
        help="the job's id, the same on every node and new for every job (default: "
        "$PET_RDZV_ID, else mnist-hogwild)",
    )
    nodes.add_argument(
        "--rdzv-conf",
        metavar="K=V,...",
        help="c10d rendezvous settings passed to torchrun, e.g. join_timeout=900 (default: "
        f"{launcher.LAST_CALL})",
    )
    nodes.add_argument(
        "--local-addr",
        metavar="ADDR",
        help="this node's address as the other nodes reach it (torchrun's --local-addr; "
        "default: its host name)",
    )
    nodes.add_argument(
        "--verbose",
        action="store_true",
        help="keep torch's own launcher and rendezvous logs (default: errors as one line)",
    )
    nodes.add_argument(
        "--max-restarts",
        type=int_in(0, 1000),
        default=0,
        metavar="M",
        help="restarts of the whole job after a failure, e.g. a lost node (default: 0); "
        "pass --resume too, so that a restart continues from the checkpoint",
    )
    nodes.add_argument(
        "--sync-every",
        type=sync_every,
        default="auto",
        metavar="K",
        help="combine the nodes' models every K batches per node (the sum travels while the "
        "workers train on), and at every epoch end; auto: adapt K at each sync so that syncs "
        "take about 5%% of the training time, never beyond the K measured safe for accuracy at "
        "this node count, nor below 10 unless that K is smaller (default: auto)",
    )
    nodes.add_argument(
        "--node-updates",
        choices=("sum", "average"),
        default="sum",
        help="at a sync, add up what each node changed since the last sync (sum: every "
        "update counts, as in Hogwild; for small K) or take the mean of the models "
        "(average: local SGD, stable for any K, but it divides the step per sample by "
        "the node count) (default: sum)",
    )
    nodes.add_argument(
        "--sync-timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="how long a sync waits for the other nodes before this node gives up with "
        "an error (default: 30)",
    )
    nodes.add_argument(
        "--start-timeout",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="how long start-up (joining, data download, CUDA start, the checkpoint "
        "agreement) waits for the other nodes (default: 300)",
    )
    return p


COMMANDS = {
    "train": "train the model (the default: `main.py [flags]` is `main.py train [flags]`)",
    "evaluate": "evaluate a checkpoint on the test set: one line, and JSON with per-class "
    "accuracy and the confusion matrix",
    "infer": "the digit in image files, or in random test images saved as DIGIT.png",
    "export": "the model as one file that plain torch loads (torch.export or TorchScript)",
}


def run_command(name, argv):
    """evaluate, infer or export: parse their flags, run, one line per error."""
    module = importlib.import_module(f"mnist_hogwild.commands.{name}")  # its module holds it
    parser = argparse.ArgumentParser(
        prog=f"main.py {name}", description=COMMANDS[name], allow_abbrev=False
    )
    parser.add_argument(
        "--checkpoint",
        default="model_checkpoint.pth",
        metavar="PATH",
        help="the trained model (default: model_checkpoint.pth; STEM.best.pth is the best epoch's)",
    )
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return module.run_command(args)
    except UsageError as e:
        say(f"error: {e}", sys.stderr)
        return 2
    except (CheckpointError, DataError, InputError) as e:
        say(f"error: {e}", sys.stderr)
        return 1


def main(argv=None):
    started = time.monotonic()
    stop = StopRequest()
    stop.install()  # first thing: a `docker stop` during start-up is handled, not a traceback
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS and argv[0] != "train":
        return run_command(argv[0], argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.nnodes or (os.environ.get("PET_NNODES") and not os.environ.get("TORCHELASTIC_RUN_ID")):
        try:
            return launcher.launch(args, argv, main)
        except UsageError as e:
            say(f"error: {e}", sys.stderr)
            return 2
    if launcher.stop_before_start():
        return 0  # the launcher got a stop signal before this leader started: nothing to do
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        say(
            "error: one leader per node: start torchrun with --nproc-per-node 1 "
            "(each leader runs --num-processes Hogwild workers itself)",
            sys.stderr,
        )
        return 2
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        # A leader started by torchrun's agent: if the agent is killed (SIGKILL,
        # OOM), the leader and its workers must not run on for ever.
        processes.die_with_parent(os.getppid())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        stop.unwind = False  # several nodes: a stop during start-up travels with the first sync
    if args.deterministic:
        # cuBLAS reads it when it starts, in every process: set before any starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # The workers' counters; trainer.run forks the workers as its first step.
    workers = pool.WorkerPool(args.num_processes, args.log_interval)
    try:
        # Imported here, after the handlers are in place and the flags are valid:
        # --help or a bad flag should not wait for torch.
        from mnist_hogwild.run import trainer

        if stop.signum is not None:  # a SystemExit from the handler was swallowed by an import
            return 128 + stop.signum
        return trainer.run(args, stop, started, workers)
    finally:
        workers.stop(graceful=False)


if __name__ == "__main__":
    exit_now(main())
