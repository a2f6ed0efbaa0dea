"""mnist-hogwild: train an MNIST classifier on every CPU core with Hogwild.

Command line and start-up. The flags are made in mnist_hogwild/commands/flags.py,
the parent's training loop is mnist_hogwild/run/trainer.py, the workers' is
mnist_hogwild/hogwild/worker.py, the network model.py; docs/design.md maps
the package.
"""

import importlib
import os
import sys
import time

from mnist_hogwild.cluster import launcher
from mnist_hogwild.hogwild import pool
from mnist_hogwild.core import processes
from mnist_hogwild.commands.flags import COMMANDS, build_parser, command_parser
from mnist_hogwild.core.errors import CheckpointError, DataError, InputError, UsageError
from mnist_hogwild.core.loglines import say
from mnist_hogwild.core.processes import exit_now
from mnist_hogwild.hogwild.signals import StopRequest


def run_command(name, argv):
    """evaluate, infer or export: parse their flags, run, one line per error."""
    module = importlib.import_module(f"mnist_hogwild.commands.{name}")  # its module holds it
    parser = command_parser(name)
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
