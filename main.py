"""mnist-hogwild: train an MNIST classifier on every CPU core with Hogwild.

Command line and start-up. The commands and their flags are
mnist_hogwild/commands/flags.py's COMMANDS,
the parent's training loop is mnist_hogwild/training/trainer.py, the workers' is
mnist_hogwild/hogwild/worker.py, the network model.py; docs/design.md maps
the package.
"""

import os
import sys
import time

from mnist_hogwild.cluster import launcher
from mnist_hogwild.hogwild import pool
from mnist_hogwild.core import processes
from mnist_hogwild.commands.flags import (
    COMMANDS,
    build_parser,
    command_parser,
    leader_argv,
    settings,
)
from mnist_hogwild.core.errors import CheckpointError, DataError, InputError, UsageError
from mnist_hogwild.core.tables import load
from mnist_hogwild.core.loglines import say
from mnist_hogwild.core.processes import exit_now
from mnist_hogwild.hogwild.signals import StopRequest


def run_command(name, argv):
    """A command of COMMANDS but train (evaluate, infer, ...): parse its flags,
    run it, one line per error."""
    args = command_parser(name).parse_args(argv)
    try:
        # (imported only now: --help answers before torch). A command reads
        # the files beside its checkpoint and writes none of them: keeping a
        # found model in the history is training's work.
        return load(COMMANDS[name].run)(args)
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
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        say(f"error: unknown command {argv[0]!r} (the commands: {names})", sys.stderr)
        return 2
    if argv and argv[0] != "train" and argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    request, options, launch = settings(build_parser().parse_args(argv))
    if launch.nnodes or (
        os.environ.get("PET_NNODES") and not os.environ.get("TORCHELASTIC_RUN_ID")
    ):
        try:
            return launcher.launch(launch, options.start_timeout, leader_argv(argv), main)
        except UsageError as e:
            say(f"error: {e}", sys.stderr)
            return 2
    if launcher.stop_before_start():
        return 0  # the launcher got a stop signal before this leader started: nothing to do
    code = leader_checks(options)
    if code:
        return code
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        stop.unwind = False  # several nodes: a stop during start-up travels with the first sync
    # The workers' counters; startup.train forks the workers as its first step.
    workers = pool.WorkerPool(options.num_processes, options.log_interval)
    try:
        # Imported here, after the handlers are in place and the flags are valid:
        # --help or a bad flag should not wait for torch.
        from mnist_hogwild.training import startup

        if stop.signum is not None:  # a SystemExit from the handler was swallowed by an import
            return 128 + stop.signum
        return startup.train(request, options, stop, started, workers)
    finally:
        workers.stop(graceful=False)


def leader_checks(options):
    """This process is a node's leader (or the only one): refuse what cannot
    work, and set what must be set before anything starts. An exit code or 0."""
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
    if options.deterministic:
        # cuBLAS reads it when it starts, in every process: set before any starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return 0


if __name__ == "__main__":
    exit_now(main())
