"""Watching the trainer from outside: its output lines with real deadlines, and
its process tree. Torch-free; shared by the scripts and the tests.

A plain `proc.stdout.readline()` blocks for ever on a hung trainer that prints
nothing, so a deadline checked between lines is no deadline. LineReader reads
in a thread and hands lines over through a queue, so every wait ends on time.
"""

import queue
import threading
import time

import psutil


class Timeout(AssertionError):
    """A wait for a line ran past its deadline (an AssertionError, for pytest)."""


class LineReader:
    """The lines of STREAM (a text pipe) as they arrive, kept in self.lines."""

    def __init__(self, stream):
        self.lines, self._queue = [], queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream):
        try:
            for line in iter(stream.readline, ""):
                self._queue.put(line)
        except (OSError, ValueError):
            pass  # the pipe was closed under us: that is an end of output too
        self._queue.put(None)

    def next_line(self, deadline):
        """The next line, or None at the end of output; Timeout past DEADLINE (monotonic)."""
        try:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise Timeout("no output before the deadline") from None
        if line is None:
            self._queue.put(None)  # stays at the end for later calls
            return None
        self.lines.append(line)
        return line

    def wait_for(self, match, timeout):
        """Read until match(line) is true; returns that line. Timeout when the
        deadline passes, EOFError when the output ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.next_line(deadline)
            except Timeout:
                raise Timeout(
                    f"no matching line within {timeout:g} s; output so far:\n{self.text()}"
                ) from None
            if line is None:
                raise EOFError(f"output ended without a matching line:\n{self.text()}")
            if match(line):
                return line

    def rest(self, timeout):
        """Everything until the end of output (Timeout if it does not end in time)."""
        deadline = time.monotonic() + timeout
        while self.next_line(deadline) is not None:
            pass
        return self.text()

    def text(self):
        return "".join(self.lines)


def _ask(pid, question, otherwise=None, **options):
    """psutil's answer to QUESTION (a method name) about PID, or OTHERWISE if it is gone."""
    try:
        return getattr(psutil.Process(pid), question)(**options)
    except psutil.Error:
        return otherwise


def descendants(pid):
    """Every process below PID (children, grandchildren, ...)."""
    return [p.pid for p in _ask(pid, "children", [], recursive=True)]


def comm(pid):
    """The process name (ps's comm), or None if PID is gone."""
    return _ask(pid, "name")


def worker_pids(pid):
    """The Hogwild workers below PID: they name themselves hogwild-worker."""
    return sorted(p for p in descendants(pid) if comm(p) == "hogwild-worker")


def alive(pid):
    """PID exists and is not a zombie."""
    return _ask(pid, "status") not in (None, psutil.STATUS_ZOMBIE)


def wait_until(condition, timeout, poll=0.02):
    """Poll CONDITION until true (returns True) or TIMEOUT seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def handles_signal(pid, signum):
    """Whether process PID has installed a handler for SIGNUM (SigCgt in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except OSError:
        pass
    return False


def pids_with_env(name, value):
    """Every live process whose environment has NAME=VALUE."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(name) == value and alive(proc.pid):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def asleep(pid):
    """PID sleeps in the kernel (state S): waiting, not computing."""
    return _ask(pid, "status") == psutil.STATUS_SLEEPING
