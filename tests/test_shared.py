"""shared.py's pieces, in process."""

import multiprocessing
import os
import signal
import sys
import threading
import time

import pytest

import helpers
import shared


def test_fd_server_errors_become_one_line_and_others_keep_their_traceback(monkeypatch, capfd):
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: calls.append(exc[0]))
    shared.condense_fd_server_errors()
    shared.condense_fd_server_errors()  # idempotent: does not wrap itself
    code = compile(
        "def serve():\n    raise ConnectionResetError('peer gone')\n",
        "/usr/lib/python3.11/multiprocessing/resource_sharer.py",
        "exec",
    )
    namespace = {}
    exec(code, namespace)
    try:
        namespace["serve"]()
    except ConnectionResetError:
        sys.excepthook(*sys.exc_info())
    assert (
        "a worker disconnected while receiving the model (ConnectionResetError)"
        in capfd.readouterr().err
    )
    assert calls == []
    try:
        raise ValueError("a real bug")
    except ValueError:
        sys.excepthook(*sys.exc_info())
    assert calls == [ValueError]


def test_describe_exit_names_the_signal():
    assert "SIGSEGV" in shared.describe_exit(-11)
    assert "code 3" in shared.describe_exit(3)
    assert "out-of-memory killer" in shared.describe_exit(-9)


def progress_and_ctx():
    ctx = multiprocessing.get_context("spawn")
    return shared.SharedProgress(ctx, log_interval=10, workers=2), ctx


def no_workers_died():
    pass


def test_parent_side_protocol_set_limit_claim_complete_pause():
    progress, _ = progress_and_ctx()
    progress.reset(5)
    progress.set_limit(7, no_workers_died)
    ppid = os.getppid()
    assert [progress.claim(ppid), progress.claim(ppid)] == [5, 6]
    progress.complete(os.getppid(), 1, 0.5)
    # One batch in flight: pause waits for it, then nothing more may be claimed.
    threading.Timer(0.2, progress.complete, (os.getppid(), 1, 0.25)).start()
    assert progress.pause(no_workers_died) == 7
    assert progress.done.value == 7 and progress.limit.value == 7
    assert progress.loss_sum.value == 0.75


def test_wait_gives_up_when_asked_and_returns_true_when_reached():
    progress, _ = progress_and_ctx()
    progress.reset(0)
    seen = []
    assert not progress.wait("done", 1, no_workers_died, give_up=lambda v: seen.append(v) or True)
    assert seen == [0]
    progress.set_limit(1, no_workers_died)
    progress.claim(os.getppid())
    progress.complete(os.getppid(), 1, 1.0)
    assert progress.wait("done", 1, no_workers_died)


def test_lock_held_by_a_dead_worker_is_noticed():
    progress, _ = progress_and_ctx()
    held, release = threading.Event(), threading.Event()

    def holder():  # as if a worker died holding the lock
        with progress.lock:
            held.set()
            release.wait(10)

    threading.Thread(target=holder).start()
    held.wait(10)

    def died():
        raise shared.WorkerDied("worker 0 was killed by SIGKILL")

    try:
        with pytest.raises(shared.WorkerDied):
            with progress.locked(died):
                pass
    finally:
        release.set()


def start_child(ctx, progress, hold_lock):
    child = ctx.Process(target=helpers.claim_and_hold, args=(progress, hold_lock), daemon=True)
    child.start()
    time.sleep(1.0)  # in claim's wait (or holding the lock) by now
    return child


def test_a_worker_killed_while_waiting_for_batches_cannot_hang_the_parent():
    # With a multiprocessing.Condition the next notify_all() blocked for ever.
    progress, ctx = progress_and_ctx()
    progress.reset(0)
    child = start_child(ctx, progress, hold_lock=False)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    started = time.monotonic()
    progress.set_limit(5, no_workers_died)
    assert progress.claim(os.getppid(), block=False) == 0
    progress.complete(os.getppid(), 1, 0.0)
    assert progress.pause(no_workers_died) == 1
    assert time.monotonic() - started < 2


def test_a_worker_killed_holding_the_lock_is_reported_not_waited_for():
    progress, ctx = progress_and_ctx()
    child = start_child(ctx, progress, hold_lock=True)
    os.kill(child.pid, signal.SIGKILL)
    child.join()

    def check():
        raise shared.WorkerDied(f"worker 0 {shared.describe_exit(child.exitcode)}")

    with pytest.raises(shared.WorkerDied, match="SIGKILL"):
        progress.wait("done", 1, check)
