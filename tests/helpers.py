"""Helpers shared by the test files (and scripts/): weight comparison, the
table of bad checkpoints, and file wrappers that fail or die mid-write."""

import os
import signal

import torch

import checkpoint
from model import Net


def assert_same_weights(a, b):
    """Two checkpoint dicts hold bitwise the same weights and momentum."""
    assert a["model_state"].keys() == b["model_state"].keys()
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    for i, state in a["optimizer_state"]["state"].items():
        other = b["optimizer_state"]["state"][i]["momentum_buffer"]
        assert torch.equal(state["momentum_buffer"], other), f"momentum {i}"


def valid_state():
    """A complete, loadable checkpoint dict for a fresh Net."""
    net = Net()
    progress = checkpoint.Progress(epoch=1, step=0, batches_per_epoch=10, seed=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1).state_dict()
    return checkpoint.make_state(net, optimizer, progress, {"batch_size": 64})


class RunsCode:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


# (id, writer of a bad checkpoint at a path, what the one-line error says)
BAD_CHECKPOINTS = [
    ("garbage", lambda p: open(p, "wb").write(b"\x00garbage" * 50), "not a readable checkpoint"),
    ("empty", lambda p: open(p, "wb").write(b""), "not a readable checkpoint"),
    ("not-a-dict", lambda p: torch.save([1, 2, 3], p), "not a mnist-hogwild checkpoint"),
    ("newer", lambda p: torch.save({**valid_state(), "format_version": 99}, p), "newer than"),
    ("incomplete", lambda p: torch.save({"format_version": 1, "model": "Net"}, p), "incomplete"),
    (
        "other-model",
        lambda p: torch.save(
            {**valid_state(), "model_state": torch.nn.Linear(2, 2).state_dict()}, p
        ),
        "different model",
    ),
    ("runs-code", lambda p: torch.save({**valid_state(), "x": RunsCode()}, p), "could run code"),
]


class WrappedFile:
    """A file object whose write() is replaced by ON_WRITE(file, data)."""

    def __init__(self, f, on_write):
        self.f, self.on_write = f, on_write

    def write(self, data):
        return self.on_write(self.f, data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fail_writes_with(error):
    """An on_write that writes a little, then raises ERROR (say, ENOSPC)."""

    def on_write(f, data):
        f.write(bytes(data)[:100])
        raise error

    return on_write


def die_halfway(f, data):
    """An on_write that writes half, flushes, and SIGKILLs its own process."""
    f.write(bytes(data)[: len(data) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def wrapped_fdopen(on_write):
    """An os.fdopen whose files write through ON_WRITE; patch checkpoint.os.fdopen with it."""
    real_fdopen = os.fdopen
    return lambda fd, mode: WrappedFile(real_fdopen(fd, mode), on_write)


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


def worker_pids(pid):
    """The Hogwild workers below PID: they name themselves (shared.name_process)."""
    workers = []
    for child in descendants(pid):
        try:
            with open(f"/proc/{child}/comm") as f:
                if f.read().strip() == "hogwild-worker":
                    workers.append(child)
        except OSError:
            pass  # exited meanwhile
    return sorted(workers)


def claim_and_hold(progress, hold_lock):
    """In a child process: wait for a batch (or hold the shared lock) until killed."""
    if hold_lock:
        progress.lock.acquire()
        signal.pause()
    progress.claim(os.getppid())
