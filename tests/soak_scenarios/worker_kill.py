"""The soak's scenario: a worker killed from outside (tests/soak.py runs it;
soak_scenarios/common.py holds what every scenario shares)."""

import os
import signal
import time


def worker_kill(soak):
    ckpt = soak.fresh("worker-kill")
    handle = soak.runner.start(
        [
            *soak.common,
            "--checkpoint",
            soak.runner.path(ckpt),
            "--checkpoint-interval",
            "0",
            "--log-interval",
            "5",
        ]
    )
    try:
        if not soak.wait_for(handle, "epoch", epoch=1) or not soak.wait_for(
            handle, "progress", epoch=2
        ):
            soak.problem("worker kill: the run never reached epoch 2")
            return
        before = open(ckpt, "rb").read()
        victim = soak.runner.worker_pids(handle)[-1]
        os.kill(victim, signal.SIGKILL)
        t = time.monotonic()
        code = soak.runner.wait(handle, timeout=60)
        elapsed = time.monotonic() - t
        logs = soak.runner.logs(handle)
    finally:
        soak.runner.remove(handle)
    soak.tally["faults"] += 1
    last = logs.strip().splitlines()[-2:]
    ok = (
        code == 1
        and "was killed by SIGKILL" in logs
        and elapsed < 5
        and open(ckpt, "rb").read() == before
    )
    print(
        f"  worker kill: exit {code} after {elapsed:.1f}s, checkpoint unchanged: "
        f"{open(ckpt, 'rb').read() == before}; {last[0] if last else ''}",
        flush=True,
    )
    if not ok:
        soak.problem(f"worker kill not handled: exit {code}, {elapsed:.1f}s, {last}")
    soak.load(ckpt)
    soak.finish(ckpt)
