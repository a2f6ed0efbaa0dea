"""main.py --nnodes: this process becomes this node's torchrun agent (torch's
own elastic launcher, c10d rendezvous), running main.py as the node's one
leader, which runs the node's Hogwild workers.

Why wrap torchrun rather than ask users to type it: torchrun answers
SIGINT/SIGTERM with a traceback, and the other nodes' agents would then wait
in torchrun's exit barrier for this one. Here the signal goes to the leader
instead; the stop travels with the next sync, every leader saves and exits,
every agent finishes normally, and this process exits 128 + the signal.
"""

import os
import signal
import sys

from errors import UsageError
from processes import STOP_SIGNALS

LAUNCH_FLAGS = ("--nnodes", "--rdzv-endpoint", "--rdzv-id", "--max-restarts")
MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.py")


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
    found = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                children = f.read().split()
        except OSError:
            continue  # the thread ended meanwhile
        for pid in children:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                    if MAIN.encode() in cmd.read():
                        found.append(int(pid))
            except OSError:
                pass  # exited meanwhile
    return found


def forward_stops_to_leader():
    """A stop signal to this launcher goes to the node's leader (which stops
    the job at its next sync); returns the list the signals are recorded in."""
    received = []

    def forward(signum, frame):
        received.append(signum)
        name = signal.Signals(signum).name
        try:
            os.write(
                2, f"received {name}: the job stops at its next sync, with a checkpoint\n".encode()
            )
        except OSError:
            pass
        for pid in leader_pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    return received


def launch(args, argv):
    """Run this node's torchrun agent; returns the process exit code."""
    if not args.rdzv_endpoint:
        raise UsageError("--nnodes needs --rdzv-endpoint HOST:PORT")
    from torch.distributed import run as torchrun  # noqa: PLC0415 - only when launching
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: PLC0415
    from torch.distributed.elastic.rendezvous import RendezvousError  # noqa: PLC0415

    received = forward_stops_to_leader()
    os.environ["MNIST_HOGWILD_LAUNCHER"] = "1"  # tells the leaders to exit 0 on a stop
    config = torchrun.parse_args(
        ["--nnodes", args.nnodes, "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
        + ["--rdzv-endpoint", args.rdzv_endpoint, "--rdzv-id", args.rdzv_id]
        + ["--max-restarts", str(args.max_restarts), "--signals-to-handle", "SIGQUIT"]
        + [MAIN]
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
