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


def main(argv=None):
    started = time.monotonic()
    stop = StopRequest()
    stop.install()  # first thing: a `docker stop` during start-up is handled, not a traceback
    args = build_parser().parse_args(argv)
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
