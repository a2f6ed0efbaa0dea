"""The Hogwild worker processes and the counters they share with the parent.

No torch here: main.py makes the counters before it imports torch, and
forks the workers right after that import (see WorkerPool).
"""

import multiprocessing
import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager

from mnist_hogwild.core import cpus
from mnist_hogwild.core import processes
from mnist_hogwild.core.errors import WorkerDied
from mnist_hogwild.core.processes import state_of

POLL_SECONDS = 0.1  # how often a waiting parent looks at signals and workers
# No batch finished for this long while a worker is stopped (SIGSTOP, a
# debugger, a terminal's Ctrl-Z of one process): say so once, naming it.
STALL_SECONDS = 10.0
# Staleness counted exactly up to this many updates; more land in the last bucket.
STALENESS_BUCKETS = 1024


class SharedCounters:
    """Counters shared by the parent and the workers, guarded by one lock, and
    every operation on them, for both sides.

    claimed: next batch to hand out; done: batches finished; limit: workers
    claim only below it (the parent lowers it to `claimed` to pause, and
    raises it to the next boundary to run); stop: workers exit; ready:
    workers set up and waiting for batches. The numbers count this node's
    batches of this run; schedule.Schedule maps them to global batches.
    staleness: how many updates had staleness S, for each S: the updates of
    other workers that landed between a worker's claim of a batch (it then
    reads the weights) and its own update (see the worker's train_loop).

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
        self.staleness = ctx.RawArray("q", STALENESS_BUCKETS)
        self.log_interval, self.workers = log_interval, workers
        self.seen = 0  # (a worker's own) batches done when it last claimed or completed

    # ----- worker side ---------------------------------------------------
    # PARENT_ALIVE is the worker's check that the processes above it still
    # exist; every wait gives up within a second once they do not.
    @contextmanager
    def _held(self, parent_alive):
        """The lock, from a worker: False instead if the parent is gone meanwhile."""
        while not self.lock.acquire(timeout=1.0):
            if not parent_alive():
                yield False
                return
        try:
            yield True
        finally:
            self.lock.release()

    def claim(self, parent_alive, block=True):
        """The next batch number, or None when told to stop (or orphaned), or,
        with block=False, when no batch may be claimed right now."""
        while True:
            with self._held(parent_alive) as held:
                if not held or self.stop.value:
                    return None
                self.seen = self.done.value
                if self.claimed.value < self.limit.value:
                    self.claimed.value += 1
                    return self.claimed.value - 1
            if not block:
                return None
            self.to_workers.acquire(timeout=1.0)
            if not parent_alive():
                return None

    def set_ready(self, parent_alive):
        with self._held(parent_alive) as held:
            if held:
                self.ready.value += 1
        self.to_parent.release()

    def complete(self, parent_alive, count, loss_sum, staleness=()):
        """COUNT more batches are done (their updates in the weights), with these
        losses and each one's STALENESS."""
        with self._held(parent_alive):
            before = self.done.value
            self.done.value = self.seen = done = before + count
            self.loss_sum.value += loss_sum
            for value in staleness:
                self.staleness[min(value, STALENESS_BUCKETS - 1)] += 1
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
        answer from give_up ends the wait early with False."""
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

    def staleness_counts(self, check):
        """A copy of the staleness histogram (see the class docstring)."""
        with self.locked(check):
            return list(self.staleness)

    def tell_stop(self, timeout=1.0):
        """Ask idle workers to exit (best effort: skipped if the lock stays busy)."""
        if self.lock.acquire(timeout=timeout):
            self.stop.value = 1
            self.lock.release()
        self._wake_workers()


def staleness_summary(before, after):
    """(mean, 99th percentile) of the staleness of the updates counted between
    two copies of the histogram (SharedCounters.staleness_counts); (0, 0) if none."""
    counts = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(counts)
    if not total:
        return 0.0, 0
    mean = sum(value * n for value, n in enumerate(counts)) / total
    seen = 0
    for value, n in enumerate(counts):
        seen += n
        if seen >= 0.99 * total:
            return mean, value
    return mean, len(counts) - 1


def describe_exit(exitcode, oom_killed=False):
    if exitcode == -signal.SIGKILL:
        if oom_killed:
            limit = cpus.cgroup_memory_limit()
            where = f"the memory limit of {limit / 2**20:.0f} MiB" if limit else "memory"
            return (
                f"was killed by the kernel's out-of-memory killer ({where} ran out: allow "
                f"more, or use fewer --num-processes; docs/performance.md has the memory "
                f"per process)"
            )
        return (
            "was killed by SIGKILL (from outside, or by the kernel's out-of-memory killer "
            "when memory runs out)"
        )
    if exitcode == -signal.SIGBUS:
        return (
            "was killed by SIGBUS: a memory-mapped file changed under it (a data file "
            "replaced or truncated while training?)"
        )
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode} before training finished"


def worker_entry(rank, counters, setup, errors, inherited):
    """Runs first in each worker, forked from the trainer. The worker dies
    with the trainer, whatever kills it: no orphans. INHERITED are the
    parent's ends of the workers' pipes, which fork copied into this process:
    closed, so that a parent that gives up (closing its ends) reads as EOF."""
    processes.ignore_stop_signals()
    owner = os.getppid()
    processes.die_with_parent(owner)
    processes.prefer_oom_kill()
    processes.name_process("hogwild-worker")
    for pipe in inherited:
        pipe.close()
    # Already imported by the trainer before the fork: costs nothing here.
    from mnist_hogwild.hogwild import worker  # noqa: PLC0415

    def parent_alive():
        return os.getppid() == owner

    worker.worker_main(rank, counters, setup, errors, parent_alive)


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
            message = (
                f"note: a worker disconnected while receiving the model ({exc_type.__name__})\n"
            )
            try:
                os.write(2, message.encode())
            except OSError:
                pass  # nobody reads stderr any more
        else:
            default(exc_type, exc, tb)

    hook.condensed_fd_errors = True
    sys.excepthook = hook


class WorkerPool:
    """The Hogwild worker processes, forked from the trainer.

    start() forks them right after the trainer has imported torch, before
    it starts any thread, CUDA or gloo (fork copies only the calling thread,
    and a CUDA context cannot cross a fork): each worker then starts in
    milliseconds with torch already imported, and gets the shared model
    later, by fd (or CUDA IPC) over its pipe. A forkserver would import
    torch a second time beside the trainer: free on an idle second core, but
    on a one-core node (a container with --cpus 1, a pod with one CPU) the
    two imports take turns and the first batch came over a second later.
    docs/design.md has the timings."""

    def __init__(self, num_processes, log_interval):
        self.size = num_processes
        self.ctx = multiprocessing.get_context("fork")
        self.counters = SharedCounters(self.ctx, log_interval, num_processes)
        self.errors = self.ctx.SimpleQueue()
        self.processes, self.pipes = [], []
        self.oom_kills = cpus.cgroup_oom_kills()
        self.stall = (None, 0.0, False)  # (batches done, since when, said so)

    def start(self):
        """Fork the worker processes (once): call it before this process
        starts threads or touches CUDA."""
        if self.processes:
            return
        with processes.signals_blocked():
            for rank in range(self.size):
                receiver, sender = self.ctx.Pipe(duplex=False)
                p = self.ctx.Process(
                    target=worker_entry,
                    args=(rank, self.counters, receiver, self.errors, [*self.pipes, sender]),
                    name=f"hogwild-worker-{rank}",
                    daemon=True,
                )
                try:
                    p.start()
                except OSError as e:
                    raise WorkerDied(f"worker {rank} could not be started ({e.strerror})") from None
                finally:
                    receiver.close()
                self.processes.append(p)
                self.pipes.append(sender)

    def __len__(self):
        return self.size

    def send_setup(self, payload):
        """Hand every worker (started) the shared model and its settings (tensors go by fd)."""
        condense_fd_server_errors()
        for rank, pipe in enumerate(self.pipes):
            try:
                pipe.send(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.check()
                raise WorkerDied(f"worker {rank} exited during start-up") from None

    def oom_killed(self):
        now = cpus.cgroup_oom_kills()
        return now is not None and self.oom_kills is not None and now > self.oom_kills

    def check(self):
        """Raise WorkerDied if any worker has exited."""
        for rank, p in enumerate(self.processes):
            if p.exitcode is not None:
                cause = describe_exit(p.exitcode, self.oom_killed())
                while not self.errors.empty():
                    failed_rank, message = self.errors.get()
                    if failed_rank == rank:
                        cause = f"failed: {message}"
                raise WorkerDied(f"worker {rank} (pid {p.pid}) {cause}")

    def watch_stall(self, done, warn):
        """Called while the workers train, with the batches DONE: one warning per
        stall if no batch finished for STALL_SECONDS and a worker is stopped
        (the others then wait for the batch it holds)."""
        last, since, said = self.stall
        now = time.monotonic()
        if done != last:
            self.stall = (done, now, False)
        elif not said and now - since >= STALL_SECONDS:
            stopped = [(r, p.pid) for r, p in enumerate(self.processes) if state_of(p.pid) == "T"]
            for rank, pid in stopped:
                warn(
                    f"worker {rank} (pid {pid}) is stopped (SIGSTOP, a debugger or Ctrl-Z) and "
                    f"no batch finished for {now - since:.0f} s: the run waits for it; "
                    f"kill -CONT {pid} lets it go on"
                )
            self.stall = (done, since, bool(stopped))

    def stop(self, graceful):
        """Graceful: tell idle workers to exit and wait up to 1.5 s; then kill what is left."""
        if graceful and self.processes:
            self.counters.tell_stop()
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
