"""main.py --nnodes: this process becomes this node's torchrun agent (torch's
own elastic launcher, c10d rendezvous), which forks the node's one leader
(main.main, torch already loaded), which runs the node's Hogwild workers.

Why wrap torchrun rather than ask users to type it:
- exit codes that mean what orchestrators read: 0 only when training is
  complete; a coordinated stop gives every node 128 + the signal (the leader
  exits 0 so that torchrun neither restarts it nor waits in its exit barrier,
  and hands the signal over in a file); the leader's own code otherwise
  (75: another node was lost, 1: an error, 2: a usage error);
- a stop signal goes to the leader (whenever it exists, also one that arrives
  before it starts or between restarts), not to torchrun, which would answer
  with a traceback;
- one `error:` line per node: torch's agent logs only with --verbose;
- a waiting job says what it waits for, and an endpoint that does not
  resolve or a port that is taken fails with one line.
"""

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time

from mnist_hogwild.core.config import LAST_CALL
from mnist_hogwild.core.errors import UsageError, one_line
from mnist_hogwild.core.loglines import say
from mnist_hogwild.core.processes import STOP_SIGNALS

# main.py at the top of the checkout, above the package: for torchrun's flags.
MAIN = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "main.py"
)
STOP_FILE_ENV = "MNIST_HOGWILD_STOP_FILE"  # where a leader records a coordinated stop
WAITING_EVERY = 5.0  # seconds between "waiting for ..." lines
# LAST_CALL: c10d waits this long for more nodes once the minimum of --nnodes
# MIN:MAX has joined (torch's default is 30 s); when MAX nodes have joined it
# does not wait.
# Seconds between a joined node's reads of an open rendezvous (torch: 1 s).
RENDEZVOUS_POLL = 0.1
# Held while the waiting thread prints. The agent forks the leader from its
# main thread: a fork in the middle of that print would leave the leader a
# stdout whose lock no thread of its own can release.
_PRINTING = threading.Lock()
os.register_at_fork(
    before=_PRINTING.acquire, after_in_parent=_PRINTING.release, after_in_child=_PRINTING.release
)


def leader_pids():
    """This process's children: the node's leader (torchrun's agent forks it
    and nothing else; a helper of multiprocessing's, if one ever runs, is
    left out). It runs in a session of its own, so a Ctrl-C to our group
    misses it."""
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
                    if b"from multiprocessing" not in cmd.read():
                        found.append(int(pid))
            except OSError:
                pass  # exited meanwhile
    return found


class Forwarder:
    """Stop signals to this launcher go to the node's leader, whenever one
    exists: a signal that comes before the leader starts, or between
    restarts, is handed to the next leader (which then stops at once, with
    nothing to save, or at its next sync)."""

    def __init__(self, stop_file):
        self.received, self.told, self.stop_file = [], set(), stop_file
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.received.append(signum)
        record_stop(self.stop_file, self.received[0])  # a leader that starts later stops at once
        name = signal.Signals(signum).name
        try:
            os.write(
                2, f"received {name}: the job stops at its next sync, with a checkpoint\n".encode()
            )
        except OSError:
            pass
        self.forward()

    def forward(self):
        if not self.received:
            return
        for pid in leader_pids():
            if pid not in self.told:
                try:
                    os.kill(pid, self.received[0])
                    self.told.add(pid)
                except ProcessLookupError:
                    pass


def resolve_endpoint(endpoint, timeout, verbose):
    """(host, port) of --rdzv-endpoint once its host resolves (a pod's DNS name
    may appear only after it starts); UsageError if it never does or is not
    HOST:PORT."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--rdzv-endpoint {endpoint}: expected HOST:PORT")
    deadline, last_said = time.monotonic() + timeout, 0.0
    while True:
        try:
            socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            return host, int(port)
        except socket.gaierror as e:
            if time.monotonic() > deadline:
                raise UsageError(
                    f"--rdzv-endpoint {endpoint}: the host {host} does not resolve "
                    f"({e.strerror}) after {timeout:g} s"
                ) from None
            if time.monotonic() - last_said > WAITING_EVERY:
                say(f"waiting for the rendezvous host {host} to resolve ({e.strerror})")
                last_said = time.monotonic()
            time.sleep(0.5)


def check_port(host, port):
    """If this node hosts the rendezvous (HOST is one of its addresses), the
    port must be free, or held by the rendezvous store of another node on the
    same machine (which this node then joins): anything else holding it would
    show as a long silence. UsageError otherwise."""
    try:
        addresses = {a[4][0] for a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except OSError:
        return
    local = {"127.0.0.1", "::1"}
    try:
        local |= {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    if not addresses & local:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
            return
        except OSError as e:
            taken = e.strerror
    if not answers_as_store(host, port):
        raise UsageError(
            f"--rdzv-endpoint {host}:{port}: this node hosts the rendezvous, but port "
            f"{port} is taken ({taken}) by something else: stop what uses it or pick another port"
        )
    if os.getpid() == 1 and not listener_in_this_pid_namespace(port):
        # torch names a node by its host name and process id: two containers
        # that share one machine's network (docker run --network host) and
        # both run the launcher as their first process get the same node id,
        # and the rendezvous waits for ever for a second node.
        raise UsageError(
            f"--rdzv-endpoint {host}:{port}: another container on this machine's network "
            f"already hosts the rendezvous, and this node would get the same node id "
            f"({socket.getfqdn()}, process 1): give each container its own network "
            f"(docker network create NET; docker run --network NET --hostname NAME ...)"
        )


def answers_as_store(host, port, timeout=3.0):
    """True if a torch TCPStore (a rendezvous another node hosts) answers at
    HOST:PORT. A TCPStore client does not honour its timeout against a server
    that never answers, so it runs in a thread that is given up on."""
    from datetime import timedelta  # noqa: PLC0415

    from torch.distributed import TCPStore  # noqa: PLC0415 - only when the port is taken

    answered = []

    def connect():
        try:
            TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout))
            answered.append(True)
        except (RuntimeError, ValueError, TimeoutError):
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def listener_in_this_pid_namespace(port):
    """True if a process this one can see listens on PORT (over IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            continue
        for row in rows:  # local address "HEXIP:HEXPORT", state 0A is LISTEN
            if len(row) > 9 and row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{row[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # another user's process, or gone
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return True
            except OSError:
                pass
    return False


def say_while_waiting(forwarder, endpoint, nnodes, job, stop):
    """Until a leader runs: one line every few seconds saying what the job waits for."""
    started = time.monotonic()
    while not stop.wait(WAITING_EVERY):
        forwarder.forward()
        if not leader_pids():
            with _PRINTING:
                say(
                    f"waiting for {nnodes} nodes to join the rendezvous at {endpoint} (job "
                    f"{job}) for {time.monotonic() - started:.0f} s: every node runs the same "
                    f"command, and can reach {endpoint}"
                )


def quiet_torch(verbose):
    """torch's agent logs (with stack frames) next to the leader's one line
    are noise. Its C++ log level is read when torch loads: call this first."""
    if not verbose:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def quiet_agent_logs(verbose):
    """The Python half of quiet_torch, once torch.distributed is imported:
    importing torch sets up its loggers anew, and some of torch's elastic
    loggers set their own level, so their shared handler is the place."""
    if not verbose:
        root = logging.getLogger("torch.distributed")
        root.setLevel(logging.CRITICAL)
        for handler in root.handlers:
            handler.setLevel(logging.CRITICAL)


def fresh_store_each_round():
    """The leaders of each rendezvous round meet in a store of their own.
    torch's default shares the agent's store across rounds, where the
    leaders' keys (gloo's addresses) carry no round: after a restart, the
    new leaders read the dead ones' addresses and the round fails or hangs
    (pytorch/pytorch#135712). With sharing off, the rank 0 leader hosts a
    new store on a free port every round."""
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")


def prompt_rendezvous():
    """torch's c10d rendezvous has a node that has joined sleep a second
    between reads of the shared state, and caches each read for a second: the
    nodes that joined first learn up to a second late that the last one has,
    and every leader then waits for them in its first collective, on every
    job's critical path. While a rendezvous is open, a node reads it every
    RENDEZVOUS_POLL seconds instead (a small get on the store); once it is
    complete (training, when the agent checks for waiting nodes), torch's
    own cache again. These are private names of torch's: if they are gone,
    torch's pace stays (tests/test_cluster.py checks them for the torch that
    requirements.txt pins). True if the rendezvous is prompt."""
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr  # noqa: PLC0415

    holder, delay = getattr(dr, "_BackendRendezvousStateHolder", None), getattr(dr, "_delay", None)
    if holder is None or delay is None:
        return False
    if getattr(holder, "prompt", False):
        return True

    class PromptStateHolder(holder):
        prompt = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.settled_cache = self._cache_duration

        def sync(self):
            self._cache_duration = self.settled_cache if self.state.complete else RENDEZVOUS_POLL
            return super().sync()

    def prompt_delay(seconds):
        # a pair is torch's random skew before a first join: kept
        delay(seconds if isinstance(seconds, tuple) else min(seconds, RENDEZVOUS_POLL))

    dr._BackendRendezvousStateHolder, dr._delay = PromptStateHolder, prompt_delay
    return True


def torchrun_argv(options, nnodes):
    """torchrun's flags (OPTIONS: LaunchOptions): one leader per node, c10d,
    our restarts; torchrun handles only SIGQUIT itself (the stop signals are
    ours, see Forwarder)."""
    conf = ",".join(c for c in (LAST_CALL, options.rdzv_conf) if c)
    argv = ["--nnodes", nnodes, "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
    argv += ["--rdzv-endpoint", options.rdzv_endpoint, "--rdzv-id", options.rdzv_id]
    argv += ["--rdzv-conf", conf, "--max-restarts", str(options.max_restarts)]
    argv += ["--signals-to-handle", "SIGQUIT"]
    return argv + (["--local-addr", options.local_addr] if options.local_addr else [])


def launch(options, start_timeout, leader_args, leader):
    """Run this node's torchrun agent (OPTIONS: LaunchOptions), which forks
    LEADER(LEADER_ARGS: the flags less the launch flags) as the node's
    leader; returns the process exit code."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        raise UsageError(
            "--nnodes inside torchrun: torchrun already started this process as a leader; "
            "run either main.py --nnodes or torchrun, not both"
        )
    # (--nnodes has no $PET_NNODES default in the flags: a leader that torchrun
    # started inherits the variable, and is no launcher.)
    nnodes = options.nnodes or os.environ.get("PET_NNODES")
    endpoint, job = options.rdzv_endpoint, options.rdzv_id
    if not endpoint:
        raise UsageError("--nnodes needs --rdzv-endpoint HOST:PORT")
    quiet_torch(options.verbose)
    fresh_store_each_round()
    stop_file, forwarder = forward_stops()
    check_port(*resolve_endpoint(endpoint, start_timeout, options.verbose))
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: PLC0415
    from torch.distributed.elastic.rendezvous import RendezvousError  # noqa: PLC0415

    config = agent_config(options, nnodes, leader_args)
    from torch.distributed.launcher.api import (
        elastic_launch,
    )  # noqa: PLC0415 - after the logs are quiet

    done = threading.Event()
    threading.Thread(
        target=say_while_waiting, args=(forwarder, endpoint, nnodes, job, done), daemon=True
    ).start()
    try:
        elastic_launch(config, lead)(leader, leader_args)
    except ChildFailedError as e:
        # The leader has said why, in one line: its code is this node's.
        code = max((f.exitcode for f in e.failures.values()), default=1)
        return 128 + forwarder.received[0] if forwarder.received else code
    except RendezvousError as e:
        say(
            f"error: the rendezvous at {endpoint} failed ({one_line(e, 200)}); if the node that "
            f"hosts it stopped, c10d rendezvous cannot survive that: start the job again",
            sys.stderr,
        )
        return 1
    finally:
        done.set()
        stopped = read_stop_file(stop_file)
    if stopped:
        return 128 + stopped
    return 128 + forwarder.received[0] if forwarder.received else 0


def forward_stops():
    """(the file where a leader records a coordinated stop, the Forwarder that
    hands the stop signals to the leader)."""
    stop_file = tempfile.NamedTemporaryFile(prefix="mnist-hogwild-stop-", delete=False)
    stop_file.close()
    os.environ[STOP_FILE_ENV] = stop_file.name
    return stop_file.name, Forwarder(stop_file.name)


def agent_config(options, nnodes, leader_args):
    """torchrun's launch config for this node, its agent logs quiet unless --verbose."""
    from torch.distributed import run as torchrun  # noqa: PLC0415 - only when launching

    quiet_agent_logs(options.verbose)
    prompt_rendezvous()
    config, _, _ = torchrun.config_from_args(
        torchrun.parse_args(torchrun_argv(options, nnodes) + [MAIN] + leader_args)
    )
    # The leader is forked from this process, which has torch loaded already:
    # a fresh interpreter would import it again on the node's critical path,
    # after the rendezvous, on a core that its workers are waiting for.
    config.start_method = "fork"
    return config


def lead(leader, argv):
    """The leader, in the process torchrun's agent forked. 0 is returned to the
    agent (success); any other code ends the process with it, which the agent
    reports as a failure with that exit code."""
    os.setsid()  # a Ctrl-C to the launcher's group reaches it once, by the Forwarder
    code = leader(argv)
    if code:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    return 0


def read_stop_file(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        os.unlink(path)
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def record_stop(path, signum):
    try:
        with open(path, "w") as f:
            f.write(str(signum))
        return True
    except OSError:
        return False


def hand_over_stop(signum):
    """In a leader started by launch(): record a coordinated stop for the
    launcher, which exits with 128 + SIGNUM; True if there is such a launcher
    (the leader then exits 0, so that torchrun neither restarts it nor waits
    for the other nodes in its exit barrier)."""
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and record_stop(path, signum)


def stop_before_start():
    """In a leader: the signal its launcher got before it started, or None."""
    path = os.environ.get(STOP_FILE_ENV)
    if not path:
        return None
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
