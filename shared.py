"""The workers' processes and the counters they share with the parent.

No torch here, on purpose: main.py starts the workers before it imports
torch, so that the workers' imports (about 2.5 s each here) overlap the
parent's. The parent sends the shared model once it has built it.
"""

import multiprocessing
from multiprocessing import forkserver
import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager

import cpus

POLL_SECONDS = 0.1  # how often a waiting parent looks at signals and workers


class SharedProgress:
    """Counters shared by the parent and the workers, guarded by one lock, and
    every operation on them, for both sides.

    claimed: next batch to hand out; done: batches finished; limit: workers
    claim only below it (the parent lowers it to `claimed` to pause, and
    raises it to the next boundary to run); stop: workers exit; ready:
    workers set up and waiting for batches. The numbers count this node's
    batches of this run; train.Schedule maps them to global batches.

    No multiprocessing.Condition: a process killed inside Condition.wait
    makes every later notify() block for ever, and one killed while holding
    its lock blocks the waiter's re-acquire for ever (an out-of-memory kill
    can land anywhere). Here every acquire has a timeout, and wake-ups are
    semaphores, whose release never blocks: a dead process cannot hang a
    live one. Each side wakes the other at once; a missed wake-up costs at
    most one poll.
    """

    def __init__(self, ctx, log_interval, workers):
        self.lock = ctx.Lock()
        self.to_parent = ctx.Semaphore(0)  # "look at the counters": done reached, ready, ...
        self.to_workers = ctx.Semaphore(0)  # "the limit moved, or stop"
        self.claimed = ctx.RawValue("q", 0)
        self.done = ctx.RawValue("q", 0)
        self.limit = ctx.RawValue("q", 0)
        self.stop = ctx.RawValue("b", 0)
        self.loss_sum = ctx.RawValue("d", 0.0)
        self.ready = ctx.RawValue("q", 0)
        self.log_interval, self.workers = log_interval, workers

    # ----- worker side ---------------------------------------------------
    @contextmanager
    def _held(self, parent_pid):
        """The lock, from a worker: None instead if the parent is gone meanwhile."""
        while not self.lock.acquire(timeout=1.0):
            if os.getppid() != parent_pid:
                yield False
                return
        try:
            yield True
        finally:
            self.lock.release()

    def claim(self, parent_pid, block=True):
        """The next batch number, or None when told to stop (or orphaned), or,
        with block=False, when no batch may be claimed right now."""
        while True:
            with self._held(parent_pid) as held:
                if not held or self.stop.value:
                    return None
                if self.claimed.value < self.limit.value:
                    self.claimed.value += 1
                    return self.claimed.value - 1
            if not block:
                return None
            self.to_workers.acquire(timeout=1.0)
            if os.getppid() != parent_pid:
                return None

    def set_ready(self, parent_pid):
        with self._held(parent_pid) as held:
            if held:
                self.ready.value += 1
        self.to_parent.release()

    def complete(self, parent_pid, count, loss_sum):
        """COUNT more batches are done (their updates in the weights), with these losses."""
        with self._held(parent_pid):
            before = self.done.value
            self.done.value = done = before + count
            self.loss_sum.value += loss_sum
            wake = (
                done == self.limit.value or done // self.log_interval > before // self.log_interval
            )
        if wake:
            self.to_parent.release()

    # ----- parent side ---------------------------------------------------
    # CHECK is the pool's check(): it raises WorkerDied. It runs whenever the
    # lock is not free within half a second (a worker killed while holding it
    # would otherwise block the parent for ever) and at every wait's poll.
    @contextmanager
    def locked(self, check):
        while not self.lock.acquire(timeout=0.5):
            check()
        try:
            yield
        finally:
            self.lock.release()

    def _wake_workers(self):
        for _ in range(self.workers):
            self.to_workers.release()

    def reset(self, start):
        """Where training starts (called before any worker may claim)."""
        with self.lock:
            self.claimed.value = self.done.value = self.limit.value = start

    def set_limit(self, limit, check):
        """Let the workers claim batches up to (not including) LIMIT."""
        with self.locked(check):
            self.limit.value = limit
        self._wake_workers()

    def pause(self, check):
        """Stop handing out batches and wait for the ones in flight: afterwards
        the finished batches are exactly 0..done-1 and the weights are still."""
        with self.locked(check):
            self.limit.value = self.claimed.value
            target = self.claimed.value
        self.wait("done", target, check)
        return target

    def wait(self, counter, target, check, give_up=None):
        """Wait until COUNTER ("done" or "ready") reaches TARGET: True.

        Between polls, check() runs and then give_up(value), if given; a true
        answer from give_up ends the wait early with False (a stop signal)."""
        value_of = getattr(self, counter)
        while True:
            with self.locked(check):
                value = value_of.value
            if value >= target:
                return True
            check()
            if give_up is not None and give_up(value):
                return False
            self.to_parent.acquire(timeout=POLL_SECONDS)

    def tell_stop(self, timeout=1.0):
        """Ask idle workers to exit (best effort: skipped if the lock stays busy)."""
        if self.lock.acquire(timeout=timeout):
            self.stop.value = 1
            self.lock.release()
        self._wake_workers()


class WorkerDied(Exception):
    pass


def describe_exit(exitcode):
    if exitcode == -signal.SIGKILL:
        memory_limit = cpus.cgroup_memory_limit()
        where = f"the memory limit of {memory_limit / 2**20:.0f} MiB" if memory_limit else "memory"
        return (
            f"was killed by SIGKILL (the kernel's out-of-memory killer does this when {where} "
            f"runs out; 2 processes need about 400 MB, each further one about 20 MB)"
        )
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode} before training finished"


def prefer_oom_kill():
    """Make the kernel's out-of-memory killer pick a worker before the parent.

    Under a memory limit (docker --memory) the kernel kills the process with
    the highest OOM score. Raising our own score needs no privilege; then the
    parent survives to report the failure and keep the checkpoint intact.
    """
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("500")
    except OSError:
        pass  # no procfs (not Linux): only the error message gets less specific


def name_process(name):
    """Set this process's name as ps, top and docker top show it (Linux: the
    comm field, 15 characters): the workers are then easy to tell apart."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass  # not Linux: the name is only cosmetic


def worker_entry(rank, progress, setup, errors):
    """Runs first in each worker; torch is imported only after the signals are set."""
    # The parent owns shutdown: a Ctrl-C to the process group or a signal must
    # not kill a worker mid-update. We were started with these signals blocked
    # (the mask is inherited from the parent, or from the forkserver it started
    # with them blocked, through fork and exec): ignoring them first leaves no gap.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    prefer_oom_kill()  # (spawn) before the import: importing torch is when memory grows most
    name_process("hogwild-worker")
    import train  # spawn: the slow import, overlapping the parent's; forkserver: already done

    train.worker(rank, progress, setup, errors)


def condense_fd_server_errors():
    """One line, not a traceback, when a worker dies while fetching the model's fds.

    multiprocessing serves the file descriptors of shared tensors from a
    thread (resource_sharer) that reports any failed hand-over through
    sys.excepthook. A worker killed mid-hand-over (say, by the OOM killer) is
    reported by the parent anyway, with its cause; the thread's traceback would
    only bury that. Every other exception keeps the normal hook.
    """
    default = sys.excepthook
    if getattr(default, "condensed_fd_errors", False):
        return

    def hook(exc_type, exc, tb):
        frames = traceback.extract_tb(tb)
        if any(os.path.basename(f.filename) == "resource_sharer.py" for f in frames):
            os.write(
                2,
                f"note: a worker disconnected while receiving the model ({exc_type.__name__})\n".encode(),
            )
        else:
            default(exc_type, exc, tb)

    hook.condensed_fd_errors = True
    sys.excepthook = hook


@contextmanager
def module_path_for_new_interpreters():
    """Make an interpreter started meanwhile import this project's modules from
    this folder, and only from it.

    Python 3.11's forkserver is handed our sys.path but does not apply it
    (3.12 does), so its preload of train.py failed silently and every worker
    imported torch itself. And `python -c` puts the current directory first
    on sys.path: in the image that is /workspace, often a mounted checkout of
    another version. PYTHONSAFEPATH=1 drops that entry, PYTHONPATH adds ours.
    Both are read only at interpreter start: they are restored at once."""
    here = os.path.dirname(os.path.abspath(__file__))
    before = {name: os.environ.get(name) for name in ("PYTHONPATH", "PYTHONSAFEPATH")}
    os.environ["PYTHONPATH"] = os.pathsep.join([here] + [before["PYTHONPATH"] or ""]).rstrip(
        os.pathsep
    )
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def signals_blocked():
    """Block SIGINT/SIGTERM in this thread; a signal that arrives meanwhile stays
    pending and is handled right after. Processes started meanwhile inherit the
    blocked mask (through fork and exec), so a Ctrl-C while they start cannot
    kill them before they ignore it."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


class WorkerPool:
    """The Hogwild worker processes.

    forkserver (the default): a server process is started at once and imports
    torch (through train.py) while the parent imports it too; the workers are
    then forked from it, each in milliseconds, instead of each importing torch
    itself. spawn: every worker is a fresh interpreter, started at once so that
    its import overlaps the parent's. See README "Fast start" for the timings.
    """

    def __init__(self, num_processes, log_interval, start_method="forkserver"):
        self.size, self.start_method = num_processes, start_method
        self.ctx = multiprocessing.get_context(start_method)
        self.progress = SharedProgress(self.ctx, log_interval, num_processes)
        self.errors = self.ctx.SimpleQueue()
        self.processes, self.pipes = [], []
        if start_method == "forkserver":
            self.ctx.set_forkserver_preload(["train"])
            with signals_blocked(), module_path_for_new_interpreters():
                forkserver.ensure_running()  # returns at once; the server imports meanwhile
        else:
            self.start()

    def start(self):
        """Start the worker processes (once). With forkserver this waits until
        the server has imported torch, so call it after the parent's own import."""
        if self.processes:
            return
        with signals_blocked():
            for rank in range(self.size):
                receiver, sender = self.ctx.Pipe(duplex=False)
                p = self.ctx.Process(
                    target=worker_entry,
                    args=(rank, self.progress, receiver, self.errors),
                    name=f"hogwild-worker-{rank}",
                    daemon=True,
                )
                p.start()
                receiver.close()
                self.processes.append(p)
                self.pipes.append(sender)

    def __len__(self):
        return self.size

    def send_setup(self, payload):
        """Hand every worker the shared model and its settings (tensors go by fd)."""
        self.start()
        condense_fd_server_errors()
        for rank, pipe in enumerate(self.pipes):
            try:
                pipe.send(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.check()
                raise WorkerDied(f"worker {rank} exited during start-up") from None

    def check(self):
        """Raise WorkerDied if any worker has exited."""
        for rank, p in enumerate(self.processes):
            if p.exitcode is not None:
                cause = describe_exit(p.exitcode)
                while not self.errors.empty():
                    failed_rank, message = self.errors.get()
                    if failed_rank == rank:
                        cause = f"failed: {message}"
                raise WorkerDied(f"worker {rank} (pid {p.pid}) {cause}")

    def stop(self, graceful):
        """Graceful: tell idle workers to exit and wait up to 1.5 s; then kill what is left."""
        if graceful and self.processes:
            self.progress.tell_stop()
            deadline = time.monotonic() + 1.5
            for p in self.processes:
                p.join(max(0.0, deadline - time.monotonic()))
        for p in self.processes:
            if p.exitcode is None:
                p.kill()
        for p in self.processes:
            p.join()
        for pipe in self.pipes:
            pipe.close()
        self.processes, self.pipes = [], []
        if self.start_method == "forkserver":
            stop_forkserver()


def stop_forkserver():
    """End the forkserver once no worker is left.

    It would end by itself when this process exits, but only after its own
    interpreter teardown (0.4 s here with torch loaded), and it holds our
    stdout and stderr open until then: whoever reads our output (a pipe, a
    test) would wait for it. It holds nothing that needs saving. The pid is
    multiprocessing's own record; without it this is skipped."""
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass  # already gone
    forkserver._forkserver._forkserver_pid = None
