"""pool.py's shared counters and worker bookkeeping, in process (and with real
child processes killed in the states that once hung the parent)."""

import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import threading

import pytest

import helpers
from mnist_hogwild.hogwild import pool
from mnist_hogwild.core.errors import WorkerDied
from procs import wait_until

FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())


def test_fd_server_errors_become_one_line_and_others_keep_their_traceback(monkeypatch, capfd):
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: calls.append(exc[0]))
    pool.condense_fd_server_errors()
    pool.condense_fd_server_errors()  # idempotent: does not wrap itself
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


def test_describe_exit_names_the_signal_and_the_cause():
    assert "SIGSEGV" in pool.describe_exit(-11)
    assert "code 3" in pool.describe_exit(3)
    assert "out-of-memory killer" in pool.describe_exit(-9, oom_killed=True)
    assert "from outside" in pool.describe_exit(-9, oom_killed=False)
    assert "data file" in pool.describe_exit(-signal.SIGBUS)


def progress_and_ctx():
    ctx = multiprocessing.get_context("spawn")
    return pool.SharedCounters(ctx, log_interval=10, workers=2), ctx


def no_workers_died():
    pass


def alive():
    return True


def test_parent_side_protocol_set_limit_claim_complete_pause():
    progress, _ = progress_and_ctx()
    progress.reset(5)
    progress.set_limit(7, no_workers_died)
    assert [progress.claim(alive), progress.claim(alive)] == [5, 6]
    assert progress.claim(alive, block=False) is None  # the limit holds
    progress.complete(alive, 1, 0.5)
    # One batch in flight: pause waits for it, then nothing more may be claimed.
    threading.Timer(0.2, progress.complete, (alive, 1, 0.25)).start()
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
    progress.claim(alive)
    progress.complete(alive, 1, 1.0)
    assert progress.wait("done", 1, no_workers_died)


def test_a_worker_whose_parent_is_gone_stops_claiming():
    progress, _ = progress_and_ctx()
    progress.reset(0)
    # No batch may be claimed and the parent is gone: claim gives up within a
    # second instead of waiting for ever.
    assert progress.claim(lambda: False) is None


def start_child(ctx, progress, hold_lock):
    """A child in claim()'s wait, or holding the lock: it says so over a pipe
    just before, and (for claim) the test then sees it asleep in the kernel."""
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=helpers.claim_and_hold, args=(progress, hold_lock, sender), daemon=True
    )
    child.start()
    sender.close()
    assert receiver.poll(60), "the child never reached its state"
    receiver.recv_bytes()
    return child


def asleep_in_futex(pid):
    """The process sleeps in a futex wait (a semaphore or lock acquire)."""
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    with open(f"/proc/{pid}/syscall") as f:
        syscall = f.read().split()[0]
    return state == "S" and syscall == str(FUTEX)


@pytest.mark.skipif(FUTEX is None, reason=f"futex syscall number unknown on {platform.machine()}")
def test_a_worker_killed_while_waiting_for_batches_cannot_hang_the_parent():
    # With a multiprocessing.Condition the next notify_all() blocked for ever.
    progress, ctx = progress_and_ctx()
    progress.reset(0)
    child = start_child(ctx, progress, hold_lock=False)
    # After its message the child's only wait is claim()'s, for a batch.
    assert wait_until(lambda: asleep_in_futex(child.pid), 30), "premise: child waiting in claim"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    result = {}

    def parent():
        progress.set_limit(5, no_workers_died)
        result["claimed"] = progress.claim(alive, block=False)
        progress.complete(alive, 1, 0.0)
        result["paused at"] = progress.pause(no_workers_died)

    thread = threading.Thread(target=parent, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the parent hung"
    assert result == {"claimed": 0, "paused at": 1}


def test_a_worker_killed_holding_the_lock_is_reported_not_waited_for():
    progress, ctx = progress_and_ctx()
    child = start_child(ctx, progress, hold_lock=True)
    assert not progress.lock.acquire(False), "premise: the child holds the lock"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not progress.lock.acquire(False), "premise: the dead child still holds the lock"

    def check():  # what WorkerPool.check does: report a worker that has exited
        if child.exitcode is not None:
            raise WorkerDied(f"worker 0 {pool.describe_exit(child.exitcode)}")

    outcome = {}

    def parent():
        try:
            progress.wait("done", 1, check)
        except WorkerDied as e:
            outcome["error"] = str(e)

    thread = threading.Thread(target=parent, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the parent hung on the dead worker's lock"
    assert "SIGKILL" in outcome["error"]


def _orphaned_worker():
    """A worker whose model hand-over fails after its parent is gone."""
    from mnist_hogwild.hogwild import worker  # noqa: PLC0415 - in the child only

    class Gone:
        def recv(self):
            raise FileNotFoundError(2, "No such file or directory")  # the fd server's socket

    worker.worker_main(0, None, Gone(), multiprocessing.SimpleQueue(), parent_alive=lambda: False)


def test_a_worker_orphaned_mid_hand_over_exits_without_a_traceback():
    # (seen in the soak: the OOM killer took the process that held the model mid-hand-over)
    proc = subprocess.run(
        [sys.executable, "-c", "import test_pool; test_pool._orphaned_worker()"],
        cwd=os.path.dirname(__file__), capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr


def test_every_worker_reads_eof_when_the_parent_gives_up_before_training():
    # A parent that gives up before training closes its ends of the pipes:
    # every worker must read that as EOF and exit, which it cannot while it
    # (or a worker forked after it) still holds a copy of a sending end.
    # What the trainer has imported before it forks:
    from mnist_hogwild.hogwild import worker  # noqa: F401, PLC0415

    workers = pool.WorkerPool(3, log_interval=10)
    workers.start()
    try:
        assert len(workers.processes) == 3
        for pipe in workers.pipes:
            pipe.close()
        for p in workers.processes:
            p.join(30)
        assert [p.exitcode for p in workers.processes] == [0, 0, 0]
    finally:
        for p in workers.processes:
            if p.exitcode is None:
                p.kill()
        workers.processes, workers.pipes = [], []


def test_the_workers_are_forked_before_the_device_the_node_or_any_thread_starts(
    tmp_path, monkeypatch
):
    import main  # noqa: PLC0415
    from mnist_hogwild.commands.flags import settings  # noqa: PLC0415
    from mnist_hogwild.training import startup  # noqa: PLC0415
    from mnist_hogwild.hogwild.signals import StopRequest  # noqa: PLC0415

    seen = []

    class Pool:
        counters = None

        def start(self):
            seen.append(("fork", threading.active_count()))

    def choose_device(requested, note):
        seen.append(("device", requested))
        raise startup.UsageError("stop here")

    monkeypatch.setattr(startup, "choose_device", choose_device)
    monkeypatch.setattr(startup.nodes, "from_env", lambda *a: seen.append(("node",)))
    monkeypatch.chdir(tmp_path)
    request, options, _ = settings(main.build_parser().parse_args(["--epochs", "1"]))
    assert startup.train(request, options, StopRequest(), 0.0, Pool()) == 2
    assert seen == [("fork", 1), ("device", "auto")]
