"""The soak's scenario: a user's terminal (the trainer on the host): a pipe's
Ctrl-C, the parent SIGKILLed, two runs on one checkpoint, SIGHUP
(tests/soak.py runs it; soak_scenarios/common.py holds what every scenario
shares)."""

import os
import signal
import subprocess
import sys
import time

import harness
import procs
from harness import MAIN


def piped_ctrl_c(soak):
    """`main.py | head -n 3`: head exits early, then Ctrl-C: the run still saves."""
    ckpt = soak.fresh("piped")
    head = subprocess.Popen(["head", "-n", "3"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    proc = soak.host_trainer(ckpt, *soak.LONG, stdout=head.stdin)
    head.stdin.close()
    try:
        head.wait(timeout=300)  # the reader is gone...
        # ...and the trainer noticed: its progress lines now come on stderr.
        proc.err.wait_for(lambda line: harness.parse_line("progress", line), 300)
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        err = proc.err.rest(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    soak.tally["faults"] += 1
    stopped = harness.parse_lines("stopped", err)
    state = soak.load(ckpt)
    ok = proc.returncode == 130 and stopped and state and state[1] == stopped[0]["step"]
    print(f"  piped Ctrl-C: exit {proc.returncode}, checkpoint {state}", flush=True)
    if not ok or "Traceback" in err:
        soak.problem(f"piped Ctrl-C: exit {proc.returncode}, checkpoint {state}, {err[-300:]}")


def parent_sigkill(soak):
    """SIGKILL of the trainer mid-training: no process of the run may be left."""
    ckpt = soak.fresh("orphans")
    tag = f"soak-{os.getpid()}-{time.monotonic_ns()}"
    proc = soak.host_trainer(ckpt, *soak.LONG, tag=tag)
    try:
        proc.out.wait_for(lambda line: harness.parse_line("progress", line), 300)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gone = procs.wait_until(lambda: not procs.pids_with_env("MNIST_HOGWILD_SOAK", tag), 3)
    finally:
        for pid in procs.pids_with_env("MNIST_HOGWILD_SOAK", tag):
            os.kill(pid, signal.SIGKILL)
    soak.tally["faults"] += 1
    print(f"  parent SIGKILL: every process of the run gone within 3 s: {gone}", flush=True)
    if not gone:
        soak.problem("parent SIGKILL left processes of the run alive")


def concurrent_run(soak):
    """A second run on a checkpoint in use: refused with one line; the first goes on.

    The premise (the first run holds the lock while the second starts) is
    held, not hoped for: the first run is paused (SIGSTOP to its process
    group) for as long as the second takes, however slow the machine."""
    ckpt = soak.fresh("concurrent")
    first = soak.host_trainer(ckpt, "--log-interval", "5")
    paused = False
    try:
        first.out.wait_for(lambda line: harness.parse_line("progress", line), 300)
        os.killpg(first.pid, signal.SIGSTOP)
        paused = first.poll() is None  # still running, now paused: it holds the lock
        second = subprocess.run(
            [sys.executable, MAIN, *soak.host_common, "--checkpoint", ckpt],
            cwd=soak.work,
            capture_output=True,
            text=True,
            timeout=300,
        )
        paused = paused and first.poll() is None
        os.killpg(first.pid, signal.SIGCONT)
        first.wait(timeout=900)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    soak.tally["faults"] += 1
    errors = second.stderr.strip().splitlines()
    ok = second.returncode == 2 and len(errors) == 1 and "in use by another run" in errors[0]
    print(
        f"  concurrent run: second exit {second.returncode} while the first was paused "
        f"({paused}), first exit {first.returncode}",
        flush=True,
    )
    if not paused:
        soak.problem("concurrent run: the first run ended before the second tried the lock")
    elif not ok or first.returncode != 0:
        soak.problem(f"concurrent run: {second.returncode} {errors} / first {first.returncode}")


def sighup(soak):
    ckpt = soak.fresh("sighup")
    proc = soak.host_trainer(ckpt, *soak.LONG)
    try:
        proc.out.wait_for(lambda line: harness.parse_line("progress", line), 300)
        os.kill(proc.pid, signal.SIGHUP)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    soak.tally["faults"] += 1
    state = soak.load(ckpt)
    print(f"  SIGHUP: exit {proc.returncode}, checkpoint {state}", flush=True)
    if proc.returncode != 129 or state is None:
        soak.problem(f"SIGHUP: exit {proc.returncode}, checkpoint {state}")


def all_of_them(soak):
    piped_ctrl_c(soak)
    parent_sigkill(soak)
    concurrent_run(soak)
    sighup(soak)
