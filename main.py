"""mnist-hogwild: train an MNIST classifier on every CPU core with Hogwild.

Command line and start-up. The training run itself is in hogwild.py, the
per-worker loop in train.py, the network in model.py.
"""

import argparse
import atexit
import os
import signal
import sys
import time

import shared
from config import DATASETS, TrainConfig


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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


positive_float = float_in(0, float("inf"), False, "more than 0")
non_negative_float = float_in(0, float("inf"), True, "0 or more")
momentum_value = float_in(0, 1, True, "in [0, 1)")


def build_parser():
    d = TrainConfig().as_dict()
    p = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "main.py",
        description="Train the MNIST Net with Hogwild: N processes share one model's "
        "memory. Checkpoints survive SIGINT/SIGTERM (docker stop); --resume continues "
        "exactly where training stopped.",
        epilog="With --resume, flags marked * default to the checkpoint's values; "
        "--batch-size, --seed and --dataset must then match the checkpoint.",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help=f"* input batch size for training (default: {d['batch_size']})",
    )
    p.add_argument(
        "--test-batch-size",
        type=positive_int,
        default=500,
        metavar="N",
        help="input batch size for testing (default: 500)",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help=f"* number of epochs to train in total (default: {d['epochs']})",
    )
    p.add_argument(
        "--lr", type=positive_float, metavar="LR", help=f"* learning rate (default: {d['lr']})"
    )
    p.add_argument(
        "--momentum",
        type=momentum_value,
        metavar="M",
        help=f"* SGD momentum (default: {d['momentum']})",
    )
    p.add_argument("--seed", type=int, metavar="S", help=f"* random seed (default: {d['seed']})")
    p.add_argument(
        "--log-interval",
        type=positive_int,
        default=10,
        metavar="N",
        help="how many batches to wait before logging training status (default: 10)",
    )
    p.add_argument(
        "--num-processes",
        type=positive_int,
        default=2,
        metavar="N",
        help="how many training processes to use (default: 2)",
    )
    p.add_argument(
        "--threads-per-process",
        type=positive_int,
        metavar="N",
        help="torch threads in each process (default: usable CPUs // "
        "processes, at least 1; usable CPUs honour affinity and cgroup quota)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="train one batch per worker, then evaluate and checkpoint (smoke test)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint if it exists (else warn and start fresh)",
    )
    p.add_argument(
        "--checkpoint",
        default="model_checkpoint.pth",
        metavar="PATH",
        help="checkpoint file; metrics go beside it as STEM.metrics.jsonl "
        "(default: model_checkpoint.pth)",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=non_negative_float,
        default=30.0,
        metavar="SECONDS",
        help="also save every SECONDS while training; 0 disables (default: 30)",
    )
    p.add_argument(
        "--data-dir",
        default="./data",
        metavar="DIR",
        help="data root, torchvision layout DIR/MNIST/raw, DIR/FashionMNIST/raw; "
        "files may be gzipped or unpacked (default: ./data)",
    )
    p.add_argument(
        "--dataset", choices=DATASETS, help=f"* which data set (default: {d['dataset']})"
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to train: auto picks cuda when torch sees a GPU, else cpu; cuda "
        "without a usable GPU is an error (default: auto)",
    )
    p.add_argument(
        "--cuda",
        dest="device",
        action="store_const",
        const="cuda",
        help="the same as --device cuda (the pytorch/examples spelling)",
    )
    p.add_argument(
        "--sync-every",
        type=positive_int,
        default=10,
        metavar="K",
        help="several machines (under torchrun): combine the nodes' models every K "
        "batches per node, and at every epoch end (default: 10)",
    )
    p.add_argument(
        "--node-updates",
        choices=("sum", "average"),
        default="sum",
        help="several machines: at a sync, add up what each node changed since the last "
        "sync (sum: every update counts, as in Hogwild; for small K) or take the mean of the "
        "models (average: local SGD, stable for any K, but it divides the step per sample by "
        "the node count) (default: sum)",
    )
    p.add_argument(
        "--sync-timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="several machines: how long a sync waits for the other nodes before this "
        "node gives up with an error (default: 30)",
    )
    launch = p.add_argument_group(
        "several machines",
        "run this on every node, the same flags everywhere: it starts torchrun's own "
        "elastic launcher with one leader per node (the plain torchrun command works too)",
    )
    launch.add_argument(
        "--nnodes",
        metavar="N|MIN:MAX",
        help="how many nodes; MIN:MAX lets the job go on with fewer after a node is lost "
        "(default: one machine, no torchrun)",
    )
    launch.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="where the nodes meet (c10d rendezvous; hosted by the node whose address it is)",
    )
    launch.add_argument(
        "--rdzv-id", default="mnist-hogwild", metavar="ID", help="job id (default: mnist-hogwild)"
    )
    launch.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="M",
        help="restarts of the whole job after a failure, e.g. a lost node (default: 0); "
        "pass --resume too, so that a restart continues from the checkpoint",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="use only deterministic algorithms (torch.use_deterministic_algorithms; on a "
        "GPU also CUBLAS_WORKSPACE_CONFIG=:4096:8), for bitwise-exact resume on a GPU",
    )
    return p


class StopRequest:
    """Records SIGINT/SIGTERM; the training loop polls it and shuts down cleanly.

    The handler only sets a field (and writes with os.write, which is safe at
    any moment): no KeyboardInterrupt can land in the middle of a save. The
    one exception is early start-up (importing torch takes seconds and cannot
    be interrupted by a flag): until the workers are started there is nothing
    to save, so the handler raises SystemExit and the process ends at once,
    well within the 2 s this project promises for docker stop.
    """

    def __init__(self):
        self.signum = None
        self.starting = True  # nothing to save yet; hogwild.Run clears it at the first batch
        # Raise SystemExit (unwind at once) rather than set the flag. hogwild.Run
        # clears it before it starts the workers: unwinding the loop that starts
        # them could leave a worker forked but not yet recorded, and so not stopped.
        self.unwind = True

    def install(self):
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.starting:
            self.signum = self.signum or signum  # if SystemExit is swallowed, the run still stops
            os.write(2, f"received {name} during start-up: nothing to save yet, exiting\n".encode())
            if self.unwind:
                # Unwinds whatever is running (even `import torch`); main()'s
                # `finally` stops the workers and multiprocessing cleans up after itself.
                raise SystemExit(128 + signum)
            return
        if self.signum is None:
            self.signum = signum
            os.write(
                2,
                f"received {name}: stopping after the current batches, saving a checkpoint\n".encode(),
            )
        else:
            os.write(
                2, f"received {name} again: still saving the checkpoint, please wait\n".encode()
            )


LAUNCH_FLAGS = ("--nnodes", "--rdzv-endpoint", "--rdzv-id", "--max-restarts")


def leader_argv(argv):
    """ARGV without the launch flags (and their values): what each node's leader gets."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f + "=" for f in LAUNCH_FLAGS)):
            out.append(arg)
    return out


def leader_pids():
    """This process's children that run main.py: the node's leader (torchrun
    starts it in a session of its own, so a Ctrl-C to our group misses it)."""
    me, found = os.path.abspath(__file__), []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                        if me.encode() in cmd.read():
                            found.append(int(pid))
                except OSError:
                    pass  # exited meanwhile
    return found


def forward_stops_to_leader():
    """SIGINT/SIGTERM to this launcher go to the node's leader (which stops the
    job at its next sync); returns the list the signals are recorded in."""
    received = []

    def forward(signum, frame):
        received.append(signum)
        name = signal.Signals(signum).name
        os.write(
            2, f"received {name}: the job stops at its next sync, with a checkpoint\n".encode()
        )
        for pid in leader_pids():
            os.kill(pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    return received


def launch(args, argv):
    """--nnodes: this process becomes this node's torchrun agent (torch's own
    elastic launcher, c10d rendezvous), running main.py as the one leader.

    Why wrap it: torchrun answers SIGINT/SIGTERM with a traceback, and the
    other nodes' agents would then wait 5 minutes in torchrun's exit barrier
    for this one. Here the signal goes to the leader instead; the stop travels
    with the next sync, every leader saves and exits 0, every agent finishes
    normally, and this process exits 128 + the signal."""
    if not args.rdzv_endpoint:
        print("error: --nnodes needs --rdzv-endpoint HOST:PORT", file=sys.stderr)
        return 2
    from torch.distributed import run as torchrun  # noqa: PLC0415 - only when launching
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: PLC0415
    from torch.distributed.elastic.rendezvous import RendezvousError  # noqa: PLC0415

    received = forward_stops_to_leader()
    os.environ["MNIST_HOGWILD_LAUNCHER"] = "1"  # tells the leaders to exit 0 on a stop
    config = torchrun.parse_args(
        ["--nnodes", args.nnodes, "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
        + ["--rdzv-endpoint", args.rdzv_endpoint, "--rdzv-id", args.rdzv_id]
        + ["--max-restarts", str(args.max_restarts), "--signals-to-handle", "SIGHUP,SIGQUIT"]
        + [os.path.abspath(__file__)]
        + leader_argv(sys.argv[1:] if argv is None else argv)
    )
    try:
        torchrun.run(config)
    except ChildFailedError as e:
        code = max((f.exitcode for f in e.failures.values()), default=1)
        print(
            f"error: this node's leader failed (exit {code}); see its error above", file=sys.stderr
        )
        return 1
    except RendezvousError as e:
        print(
            f"error: the rendezvous at {args.rdzv_endpoint} is gone ({type(e).__name__}): the "
            f"node that hosts it stopped, and c10d rendezvous cannot survive that",
            file=sys.stderr,
        )
        return 1
    return 128 + received[0] if received else 0


def main(argv=None):
    started = time.monotonic()
    stop = StopRequest()
    stop.install()  # first thing: a `docker stop` during start-up is handled, not a traceback
    args = build_parser().parse_args(argv)
    if args.nnodes:
        # torch's C++ warnings (with stack frames) when another node's agent goes
        # away are noise next to the leader's one-line error: errors only.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        return launch(args, argv)
    if args.deterministic:
        # cuBLAS reads it when it starts, in every process: set before any starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Start the forkserver now: it imports torch (about 1.4 s here) while this
    # process imports it too; the workers are forked from it once the model exists.
    pool = shared.WorkerPool(args.num_processes, args.log_interval)
    try:
        # Imported here, after the handlers are in place and the flags are valid:
        # --help or a bad flag should not wait for torch.
        import hogwild

        return hogwild.run(args, stop, started, pool)
    finally:
        pool.stop(graceful=False)


def exit_now(code):
    """End the process with CODE, skipping the interpreter's teardown.

    With torch loaded that teardown took 0.4 s here, after everything was
    saved: it was most of the time from `docker stop` to the container's
    exit. Every checkpoint is already fsynced; the streams are flushed here,
    and the atexit handlers still run (multiprocessing's: they release the
    shared semaphores), so only the freeing of memory is skipped."""
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
