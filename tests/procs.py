"""Watching the trainer from outside: its output lines with real deadlines, and
its process tree. Torch-free; shared by the scripts and the tests.

A plain `proc.stdout.readline()` blocks for ever on a hung trainer that prints
nothing, so a deadline checked between lines is no deadline. LineReader reads
in a thread and hands lines over through a queue, so every wait ends on time.
"""

import os
import queue
import threading
import time


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


def descendants(pid):
    """Every process below PID (children, grandchildren, ...)."""
    found, todo = [], [pid]
    while todo:
        try:
            with open(f"/proc/{todo[0]}/task/{todo[0]}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            kids = []
        found += kids
        todo = todo[1:] + kids
    return found


def comm(pid):
    """The process name (ps's comm), or None if PID is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def worker_pids(pid):
    """The Hogwild workers below PID: they name themselves hogwild-worker."""
    return sorted(p for p in descendants(pid) if comm(p) == "hogwild-worker")


def alive(pid):
    """PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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


def environ_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    except OSError:
        return {}


def pids_with_env(name, value):
    """Every live process whose environment has NAME=VALUE (bytes compared)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and environ_of(int(entry)).get(name.encode()) == value.encode():
            if alive(int(entry)):
                found.append(int(entry))
    return found


def asleep(pid):
    """PID sleeps in the kernel (state S): waiting, not computing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "S"
    except OSError:
        return False
