"""Helpers shared by the test files: weight comparison, the table of bad
checkpoints, file wrappers that fail or die mid-write, a child process for
the shared-counter tests. (What tests and scripts share is in scripts/.)"""

import os
import signal

import torch

from mnist_hogwild.training import checkpoint
from mnist_hogwild.learn import optimizers
from mnist_hogwild.core.config import TrainConfig
from model import Net


def assert_same_weights(a, b):
    """Two checkpoint dicts hold bitwise the same weights and optimizer state."""
    assert a["model_state"].keys() == b["model_state"].keys()
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    assert a["optimizer_state"]["state"].keys() == b["optimizer_state"]["state"].keys()
    for i, state in a["optimizer_state"]["state"].items():
        other = b["optimizer_state"]["state"][i]
        assert state.keys() == other.keys(), i
        for name, tensor in state.items():
            assert torch.equal(tensor, other[name]), f"{name} {i}"


def valid_state(**changes):
    """A complete, loadable checkpoint dict for a fresh Net (with CHANGES)."""
    net = Net()
    progress = checkpoint.Record(epoch=1, step=0, batches_per_epoch=10, seed=1)
    optimizer = optimizers.MomentumSGD(
        net.parameters(),
        0.1,
        0.5,
        optimizers.optimizer_class("sgd").new_state(list(net.parameters())),
    )
    config = TrainConfig().as_dict()
    state = checkpoint.make_state(net, optimizer.state_dict(), progress, config, {}, "run")
    return {**state, **changes}


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
        "another network than this model.py's Net",
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


def claim_and_hold(progress, hold_lock, conn):
    """In a child process: hold the shared lock, or wait in claim() for a batch,
    until killed; CONN gets a message just before (the parent waits for it)."""
    if hold_lock:
        progress.lock.acquire()
        conn.send_bytes(b"holding the lock")
        signal.pause()
    conn.send_bytes(b"claiming")
    progress.claim(lambda: True)
