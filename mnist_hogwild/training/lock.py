"""One run per checkpoint: an advisory lock beside it, with a record of who
holds it, so that a second run is refused naming the first, and a run after
a killed one says so."""

import fcntl
import json
import os

from mnist_hogwild.core.errors import CheckpointError, UsageError
from mnist_hogwild.training import checkpoint

MODE = 0o644  # private to write, readable to lock (see PathLock.open_file)


class PathLock:
    """The lock file PATH (.STEM.lock beside the checkpoint) and its record
    {"pid", "host", "state": "running" or "ended"}."""

    def __init__(self, path):
        self.path, self.fd = path, None

    def take(self, guarded, warn):
        """Lock for the run on GUARDED (the checkpoint): a flock that the kernel
        drops when the process dies, so a crash never leaves a stale lock.
        Where the file system has no locks (some network ones) the run goes
        on, warned. UsageError if another run holds it."""
        fd = self.open_file()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_record(fd)
            os.close(fd)
            who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
            raise UsageError(
                f"{guarded} is in use by another run ({who}); wait for it to end, or "
                f"pass another --checkpoint"
            ) from None
        except OSError as e:
            warn(
                f"cannot lock {self.path} ({e.strerror}): this file system has no "
                f"locks, so nothing stops two runs from sharing {guarded}"
            )
        previous = read_record(fd)
        if previous.get("state") == "running":
            warn(
                f"the previous run on {guarded} (pid {previous.get('pid')} on host "
                f"{previous.get('host')}) did not end: it was killed (out of memory, SIGKILL, "
                f"or its machine went down); its last checkpoint is intact"
            )
        self.fd = fd
        self.write_record("running")

    def open_file(self):
        """The lock file, writable by its owner only and readable by every uid
        (a run as root, then one with docker run --user, share a volume):
        one opened read-only by another uid still locks (flock needs only an
        open file); its record of who holds it is then not updated."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, MODE)
        except PermissionError:
            try:
                return os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise CheckpointError(
                    f"cannot open the lock file {self.path} ({e.strerror}, uid "
                    f"{os.getuid()}): remove it, or run as its owner"
                ) from None
        try:
            os.fchmod(fd, MODE)  # (whatever the umask; an older version's 0o666 too)
        except OSError:
            pass  # another uid's file, opened for writing: its mode lets us
        return fd

    def write_record(self, state):
        record = {"pid": os.getpid(), "host": checkpoint.host(), "state": state}
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps(record).encode(), 0)
        except OSError:
            pass  # only the next run's diagnosis gets less specific

    def release(self):
        """The run ended (finished, stopped or failed, but not killed)."""
        if self.fd is not None:
            self.write_record("ended")
            os.close(self.fd)
            self.fd = None


def read_record(fd):
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}
