"""Process plumbing: names, OOM scores, dying with the parent, signal masks,
fast exits. Torch-free.

One private attribute of the standard library is used, only here and
behind a fallback (tests/test_processes.py checks it; checked on CPython
3.11 and 3.12): atexit._run_exitfuncs, so that exit_now() can skip the
interpreter's teardown and still run the atexit handlers.
"""

import atexit
import ctypes
import ctypes.util
import os
import signal
import sys
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1
WORKER_OOM_SCORE = 500


def name_process(name):
    """Set this process's name as ps, top and docker top show it (Linux: the
    comm field, 15 characters): the workers are then easy to tell apart."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass  # not Linux: the name is only cosmetic


def prefer_oom_kill():
    """Make the kernel's out-of-memory killer pick this process before the parent.

    Under a memory limit (docker --memory) the kernel kills the process with
    the highest OOM score. Raising our own score needs no privilege; then the
    parent survives to report the failure and keep the checkpoint intact."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(WORKER_OOM_SCORE))
    except OSError:
        pass  # no procfs (not Linux): only the error message gets less specific


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


def die_with_parent(expected_parent):
    """Ask the kernel to SIGKILL this process when its parent dies (Linux's
    PR_SET_PDEATHSIG), then make sure the parent is still EXPECTED_PARENT: if
    it died before the request, exit now. Elsewhere only the check is made."""
    libc = _libc()
    if libc is not None and sys.platform.startswith("linux"):
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != expected_parent:
        os._exit(1)


@contextmanager
def signals_blocked():
    """Block the stop signals in this thread; a signal that arrives meanwhile
    stays pending and is handled right after. Processes started meanwhile
    inherit the blocked mask (through fork and exec), so a Ctrl-C while they
    start cannot kill them before they ignore it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def ignore_stop_signals():
    """For workers: the parent owns shutdown. Ignore first, then unblock (the
    mask was inherited blocked), so there is no moment a signal could kill us."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def exit_now(code):
    """End the process with CODE, skipping the interpreter's teardown.

    With torch loaded that teardown takes most of a second, after everything
    is saved: it was most of the time from `docker stop` to the container's
    exit. Every checkpoint is already fsynced; the streams are flushed here,
    and the atexit handlers still run (multiprocessing's: they release the
    shared semaphores), so only the freeing of memory is skipped."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a reader that went away (a closed pipe) cannot be flushed to
    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_functions is None:
        sys.exit(code)  # another Python: the slow, ordinary exit
    run_exit_functions()
    os._exit(code)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or no pid at all: assume alive)
    return True


def state_of(pid):
    """PID's scheduling state as ps shows it ("R", "S", "D", "T" stopped, "Z"
    ...), or None if it is gone (or this is not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
