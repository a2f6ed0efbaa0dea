#!/usr/bin/env python3
"""Fault-injection soak: stops, kills, full disks, bad inputs, and nothing lost.

    python tests/soak.py            # full soak: 20 of each, Fashion-MNIST if installed
    python tests/soak.py --quick    # the CI subset: 3 of each, small synthetic data
    python tests/soak.py --host     # without Docker: runs the trainer directly

Runs real containers (or the host trainer) through faults. After each one it
checks that the checkpoint loads, that progress never went backwards, and at
the end that --resume completes with a model as good as an uninterrupted
run's. Prints a table and writes it (and the raw numbers) to --out. Exits 1
if any goal is missed. Needs root for the full-disk fault (a small tmpfs).
"""

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# harness and procs, shared with the scripts, live in tools/.
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
import harness
import procs
from harness import MAIN, docker, docker_run
from procs import LineReader

from mnist_hogwild.training import checkpoint  # (found through the path harness sets)
from model import Net


class DockerRunner:
    """Trainer runs as containers; WORK is mounted at /workspace."""

    def __init__(self, image, work):
        self.image, self.work, self.count = image, work, 0

    def path(self, host_path):
        return "/workspace/" + os.path.relpath(host_path, self.work)

    def command(self, flags, docker_args, name=None):
        volumes = [(self.work, "/workspace")]
        return docker_run(
            self.image,
            *flags,
            volumes=volumes,
            name=name,
            detach=name is not None,
            docker_args=docker_args,
        )

    def start(self, flags, docker_args=()):
        self.count += 1
        name = f"soak-{os.getpid()}-{self.count}"
        subprocess.run(self.command(flags, docker_args, name), check=True, capture_output=True)
        return name

    def logs(self, name):
        proc = docker("logs", name)
        return proc.stdout + proc.stderr

    def stop(self, name):
        """docker stop; returns seconds until the container had exited."""
        t = time.monotonic()
        docker("stop", "-t", "10", name, check=True)
        return time.monotonic() - t

    def kill(self, name):
        docker("kill", name)

    def wait(self, name, timeout=900):
        return int(docker("wait", name, timeout=timeout).stdout.strip())

    def remove(self, name):
        docker("rm", "-f", name)

    def worker_pids(self, name):
        return harness.container_worker_pids(name)

    def run(self, flags, docker_args=()):
        cmd = self.command(flags, docker_args)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        return proc.returncode, proc.stdout + proc.stderr


class HostRunner:
    """The same operations on the trainer run directly (no Docker)."""

    def __init__(self, work):
        self.work, self.procs = work, {}

    def path(self, host_path):
        return host_path

    def start(self, flags, docker_args=()):
        log = tempfile.NamedTemporaryFile("w+", dir=self.work, suffix=".log", delete=False)
        proc = subprocess.Popen(
            [sys.executable, MAIN, *map(str, flags)],
            cwd=self.work,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[proc.pid] = (proc, log.name)
        return proc.pid

    def logs(self, pid):
        with open(self.procs[pid][1]) as f:
            return f.read()

    def stop(self, pid):
        proc = self.procs[pid][0]
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        return time.monotonic() - t

    def kill(self, pid):
        os.killpg(pid, signal.SIGKILL)

    def wait(self, pid, timeout=900):
        code = self.procs[pid][0].wait(timeout=timeout)
        return 128 - code if code < 0 else code

    def remove(self, pid):
        proc = self.procs[pid][0]
        if proc.poll() is None:
            os.killpg(pid, signal.SIGKILL)
            proc.wait()

    def worker_pids(self, pid):
        return harness.host_worker_pids(pid)

    def run(self, flags, docker_args=()):
        proc = subprocess.run(
            [sys.executable, MAIN, *map(str, flags)],
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=900,
        )
        return proc.returncode, proc.stdout + proc.stderr


class Soak:
    def __init__(self, runner, work, data_dir, dataset, epochs, k, rng):
        self.runner, self.work, self.k, self.rng = runner, work, k, rng
        self.common = [
            "--data-dir",
            runner.path(data_dir),
            "--dataset",
            dataset,
            "--epochs",
            epochs,
        ]
        self.tally = {
            "faults": 0,
            "unreadable": 0,
            "resumes_failed": 0,
            "went_back": 0,
            "stop_s": [],
            "lost_s": [],
            "problems": [],
            "phases": {},
        }
        self.expected = Net().state_dict()
        # The host faults run the trainer directly, on the data's host path.
        self.host_common = ["--data-dir", data_dir, "--dataset", dataset, "--epochs", epochs]

    # ----- helpers -------------------------------------------------------
    def problem(self, text):
        self.tally["problems"].append(text)
        print(f"  PROBLEM: {text}", flush=True)

    def load(self, path):
        """(epoch, step, batches_per_epoch) of the checkpoint, None if absent; counts unreadable."""
        if not os.path.exists(path):
            return None
        try:
            state = checkpoint.load(path, self.expected)
        except checkpoint.CheckpointError as e:
            self.tally["unreadable"] += 1
            self.problem(f"unreadable checkpoint: {e}")
            return None
        return state["epoch"], state["step"], state["batches_per_epoch"]

    def accuracy(self, path):
        return checkpoint.load(path, self.expected)["metrics"][-1]["accuracy_percent"] / 100

    def fresh(self, name):
        ckpt = os.path.join(self.work, name, "model_checkpoint.pth")
        shutil.rmtree(os.path.dirname(ckpt), ignore_errors=True)
        os.makedirs(os.path.dirname(ckpt))
        os.chmod(os.path.dirname(ckpt), 0o777)
        return ckpt

    def wait_for(self, handle, kind, timeout=300, **fields):
        """Wait for a KIND log line (hogwild.LINES) whose fields include FIELDS."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for parsed in harness.parse_lines(kind, self.runner.logs(handle)):
                if fields.items() <= parsed.items():
                    return True
            time.sleep(0.05)
        return False

    def finish(self, ckpt, extra=()):
        code, out = self.runner.run(
            [*self.common, "--resume", "--checkpoint", self.runner.path(ckpt), *extra]
        )
        if code != 0:
            self.tally["resumes_failed"] += 1
            self.problem(f"resume failed (exit {code}): {out.strip().splitlines()[-1:]}")
            return None
        state = checkpoint.load(ckpt, self.expected)
        epochs = int(self.common[5])
        if (state["epoch"], state["step"], len(state["metrics"])) != (epochs, 0, epochs):
            # A resumed run that exits 0 without finishing every epoch's training
            # and evaluation is a failed resume too (this caught a real bug).
            self.tally["resumes_failed"] += 1
            self.problem(
                f"resume ended at epoch {state['epoch']}, step {state['step']} with "
                f"{len(state['metrics'])} evaluations, not {epochs} complete epochs"
            )
            return None
        return self.accuracy(ckpt)

    # ----- faults --------------------------------------------------------
    def baseline(self):
        ckpt = self.fresh("baseline")
        t = time.monotonic()
        code, out = self.runner.run([*self.common, "--checkpoint", self.runner.path(ckpt)])
        wall = time.monotonic() - t
        if code != 0:
            raise SystemExit(f"baseline run failed:\n{out}")
        acc = self.accuracy(ckpt)
        startup = harness.parse_lines("ready", out)[0]["seconds"]
        # Stops land anywhere from start-up to a bit past the share of training
        # each of the K segments has to do, so that they spread over the run.
        self.max_delay = startup + 2 * max(wall - startup, 1.0) / self.k
        print(
            f"baseline (uninterrupted): accuracy {100 * acc:.2f}%, {wall:.0f} s, first batch "
            f"after {startup:.1f} s; faults land 0-{self.max_delay:.1f} s after each start",
            flush=True,
        )
        return ckpt, acc

    def interrupt_chain(self, kind, interval):
        """K stops or SIGKILLs at random moments, each followed by --resume."""
        ckpt = self.fresh(kind)
        previous = None
        for i in range(self.k):
            handle = self.runner.start(
                [
                    *self.common,
                    "--resume",
                    "--checkpoint",
                    self.runner.path(ckpt),
                    "--checkpoint-interval",
                    interval,
                    "--log-interval",
                    "5",
                ]
            )
            time.sleep(self.rng.uniform(0, self.max_delay))
            logs = self.runner.logs(handle)
            phase = "training" if harness.parse_lines("ready", logs) else "start-up"
            if "training already complete" in logs or harness.parse_lines("done", logs):
                phase = "finished"
            self.tally["phases"][phase] = self.tally["phases"].get(phase, 0) + 1
            if kind == "stop":
                self.tally["stop_s"].append(self.runner.stop(handle))
                code = self.runner.wait(handle)
                if code not in (0, 130):
                    self.problem(f"stop {i}: exit code {code}")
            else:
                self.runner.kill(handle)
                self.runner.wait(handle)
            logs = self.runner.logs(handle)
            self.runner.remove(handle)
            self.tally["faults"] += 1
            progress = self.load(ckpt)
            if progress is None and phase == "training" and kind == "stop":
                self.problem(f"stop {i} during training left no checkpoint")
            if progress is not None:
                done = progress[0] * progress[2] + progress[1]
                if previous is not None and done < previous:
                    self.tally["went_back"] += 1
                    self.problem(
                        f"{kind} {i}: progress went back from {previous} to {done} batches"
                    )
                previous = done
                if kind == "kill":
                    self.record_lost(logs, progress)
            print(f"  {kind} {i + 1}/{self.k} during {phase}: checkpoint at {progress}", flush=True)
        return ckpt

    def record_lost(self, logs, progress):
        """Work lost to a SIGKILL: trained (per the last progress line) but not in the checkpoint."""
        lines = harness.parse_lines("progress", logs)
        if not lines:
            return
        last = lines[-1]
        epoch, samples, total, rate = (
            last[k] for k in ("epoch", "samples", "total", "samples_per_s")
        )
        per_epoch = progress[2]
        batch_size = -(-total // per_epoch)
        logged = (epoch - 1) * per_epoch + -(-samples // batch_size)
        saved = progress[0] * per_epoch + progress[1]
        self.tally["lost_s"].append(max(0, logged - saved) * batch_size / max(rate, 1))

    def worker_kill(self):
        ckpt = self.fresh("worker-kill")
        handle = self.runner.start(
            [
                *self.common,
                "--checkpoint",
                self.runner.path(ckpt),
                "--checkpoint-interval",
                "0",
                "--log-interval",
                "5",
            ]
        )
        try:
            if not self.wait_for(handle, "epoch", epoch=1) or not self.wait_for(
                handle, "progress", epoch=2
            ):
                self.problem("worker kill: the run never reached epoch 2")
                return
            before = open(ckpt, "rb").read()
            victim = self.runner.worker_pids(handle)[-1]
            os.kill(victim, signal.SIGKILL)
            t = time.monotonic()
            code = self.runner.wait(handle, timeout=60)
            elapsed = time.monotonic() - t
            logs = self.runner.logs(handle)
        finally:
            self.runner.remove(handle)
        self.tally["faults"] += 1
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
            self.problem(f"worker kill not handled: exit {code}, {elapsed:.1f}s, {last}")
        self.load(ckpt)
        self.finish(ckpt)

    def disk_full(self):
        if os.geteuid() != 0:
            self.problem("disk full: needs root to mount a small tmpfs (not run)")
            return
        mount = os.path.join(self.work, "full")
        os.makedirs(mount, exist_ok=True)
        # Room for one checkpoint (about 180 KB) but not for the next one's temp file.
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=300k,mode=0777", "tmpfs", mount], check=True
        )
        try:
            ckpt = os.path.join(mount, "model_checkpoint.pth")
            code, out = self.runner.run(
                [
                    *self.common,
                    "--checkpoint",
                    self.runner.path(ckpt),
                    "--checkpoint-interval",
                    "0",
                ],
                docker_args=["-v", f"{mount}:{self.runner.path(mount)}"],
            )
            self.tally["faults"] += 1
            last = out.strip().splitlines()[-1] if out.strip() else ""
            progress = self.load(ckpt)
            # Room for one model file: the first epoch's goes to the history
            # first (a copy, never a link), so the checkpoint beside it may not fit.
            models = os.path.join(mount, "model_checkpoint.models")
            kept = sorted(os.listdir(models)) if os.path.isdir(models) else []
            print(
                f"  disk full: exit {code}; {last}; checkpoint {progress}; kept {kept}", flush=True
            )
            if (
                code != 1
                or "No space left on device" not in last
                or "Traceback" in out
                or (progress is None and not any(n.endswith(".pth") for n in kept))
            ):
                self.problem(f"disk full not handled: exit {code}, {last}")
        finally:
            subprocess.run(["umount", mount], check=False)

    def unwritable(self, docker):
        cases = []
        ro = os.path.join(self.work, "readonly")
        os.makedirs(ro, exist_ok=True)
        if docker:
            cases.append(("read-only volume", ["-v", f"{ro}:/out:ro"], "/out/model_checkpoint.pth"))
            owned = os.path.join(self.work, "root-owned")
            os.makedirs(owned, exist_ok=True)
            os.chmod(owned, 0o755)
            cases.append(
                (
                    "volume not writable by uid 12345",
                    ["--user", "12345:12345", "-v", f"{owned}:/out"],
                    "/out/model_checkpoint.pth",
                )
            )
        else:
            blocker = os.path.join(self.work, "blocker")
            open(blocker, "w").close()
            cases.append(
                ("unwritable directory", [], os.path.join(blocker, "model_checkpoint.pth"))
            )
        for label, docker_args, path in cases:
            t = time.monotonic()
            code, out = self.runner.run(
                [*self.common, "--checkpoint", path], docker_args=docker_args
            )
            elapsed = time.monotonic() - t
            self.tally["faults"] += 1
            last = out.strip().splitlines()[-1] if out.strip() else ""
            print(f"  {label}: exit {code} in {elapsed:.1f}s; {last}", flush=True)
            if (
                code != 1
                or "cannot write checkpoints" not in last
                or harness.parse_lines("ready", out)
            ):
                self.problem(f"{label} not reported before training: exit {code}, {last}")

    def memory_limit(self):
        # 16 workers cannot fit in 250 MB (each writes some of the trainer's
        # pages it shares, and has a heap of its own), the trainer alone
        # easily does: a worker is killed, and the trainer must say why.
        ckpt = self.fresh("memory")
        code, out = self.runner.run(
            [*self.common, "--checkpoint", self.runner.path(ckpt), "--num-processes", "16"],
            docker_args=["--memory", "250m", "--memory-swap", "250m"],
        )
        self.tally["faults"] += 1
        last = out.strip().splitlines()[-2:] if out.strip() else []
        print(f"  memory limit 250m, 16 processes: exit {code}; {' | '.join(last)}", flush=True)
        if code != 1 or "memory limit of 250 MiB" not in out or "Traceback" in out:
            self.problem(f"memory limit not reported clearly: exit {code}, {last}")
        self.load(ckpt)

    def bad_inputs(self, good_ckpt, data_dir, docker):
        ckpt = self.fresh("bad-inputs")
        shutil.copy(good_ckpt, ckpt)
        good = open(good_ckpt, "rb").read()

        def evil(path):
            class RunsCode:
                def __reduce__(self):
                    return (os.system, ("touch /workspace/PWNED",))

            import torch

            torch.save({"format_version": 1, "x": RunsCode()}, path)

        def foreign(path):
            import torch

            torch.save(
                {
                    **{k: 0 for k in checkpoint.REQUIRED_KEYS},
                    "format_version": 1,
                    "model_state": torch.nn.Linear(4, 4).state_dict(),
                },
                path,
            )

        def newer(path):
            import torch

            torch.save({"format_version": checkpoint.FORMAT_VERSION + 1}, path)

        checkpoint_cases = {
            "garbage checkpoint": lambda p: open(p, "wb").write(os.urandom(4096)),
            "truncated checkpoint": lambda p: open(p, "wb").write(good[: len(good) // 2]),
            "foreign checkpoint": foreign,
            "newer-format checkpoint": newer,
            "malicious checkpoint": evil,
        }
        for label, make in checkpoint_cases.items():
            make(ckpt)
            before = open(ckpt, "rb").read()
            code, out = self.runner.run(
                [*self.common, "--resume", "--checkpoint", self.runner.path(ckpt)]
            )
            self.check_clean_failure(label, code, out, ckpt, before, expect_code=1)
        if os.path.exists(os.path.join(self.work, "PWNED")):
            self.problem("the malicious checkpoint ran code")

        shutil.copy(good_ckpt, ckpt)
        raw_name = "FashionMNIST" if "fashion" in self.common[3] else "MNIST"
        data_cases = {
            "truncated data file": ("t10k-images-idx3-ubyte", lambda b: b[: len(b) // 2]),
            "wrong-magic data file": (
                "t10k-labels-idx1-ubyte",
                lambda b: b"\x00\x00\x08\x07" + b[4:],
            ),
            "mismatched-count data file": (
                "t10k-labels-idx1-ubyte",
                lambda b: b[:4] + (int.from_bytes(b[4:8], "big") - 1).to_bytes(4, "big") + b[8:-1],
            ),
        }
        for label, (name, mutate) in data_cases.items():
            bad = os.path.join(self.work, "bad-data")
            shutil.rmtree(bad, ignore_errors=True)
            shutil.copytree(data_dir, bad, symlinks=False)
            raw = os.path.join(bad, raw_name, "raw")
            for f in os.listdir(raw):
                if f.endswith(".gz") and os.path.exists(os.path.join(raw, f[:-3])):
                    os.unlink(os.path.join(raw, f))
            target = os.path.join(raw, name)
            if not os.path.exists(target):
                import gzip

                with gzip.open(target + ".gz") as src:
                    payload = src.read()
                os.unlink(target + ".gz")
            else:
                payload = open(target, "rb").read()
            with open(target, "wb") as f:
                f.write(mutate(payload))
            flags = [*self.common, "--checkpoint", self.runner.path(ckpt)]
            flags[1] = self.runner.path(bad)
            code, out = self.runner.run(flags)
            self.check_clean_failure(label, code, out, ckpt, good, expect_code=1)
        empty = os.path.join(self.work, "no-data")
        os.makedirs(empty, exist_ok=True)
        os.chmod(empty, 0o777)
        flags = [*self.common, "--checkpoint", self.runner.path(ckpt)]
        flags[1] = self.runner.path(empty)
        code, out = self.runner.run(flags, docker_args=["--network", "none"] if docker else [])
        self.check_clean_failure("missing data, no network", code, out, ckpt, good, expect_code=1)
        for flags in (
            ["--num-processes", "0"],
            ["--lr", "-1"],
            ["--epochs", "many"],
            ["--dataset", "cifar"],
        ):
            code, out = self.runner.run(
                [*self.common, "--checkpoint", self.runner.path(ckpt), *flags]
            )
            self.check_clean_failure(
                f"flag {' '.join(flags)}", code, out, ckpt, good, expect_code=2
            )

    # ----- faults on the host (a user's terminal, not a container) --------
    # A run that a fault must find still training: more epochs than any fault
    # test waits for, so that it is still going however slow the machine.
    LONG = ("--log-interval", "5", "--epochs", "1000")

    def host_trainer(self, ckpt, *flags, tag=None, stdout=subprocess.PIPE):
        env = {**os.environ, "MNIST_HOGWILD_SOAK": tag} if tag else None
        argv = [sys.executable, MAIN, *self.host_common, "--checkpoint", ckpt, *map(str, flags)]
        proc = subprocess.Popen(
            argv, cwd=self.work, stdout=stdout, stderr=subprocess.PIPE, text=True,
            env=env, start_new_session=True,
        )  # fmt: skip
        proc.out = LineReader(proc.stdout) if stdout == subprocess.PIPE else None
        proc.err = LineReader(proc.stderr)
        return proc

    def piped_ctrl_c(self):
        """`main.py | head -n 3`: head exits early, then Ctrl-C: the run still saves."""
        ckpt = self.fresh("piped")
        head = subprocess.Popen(
            ["head", "-n", "3"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        proc = self.host_trainer(ckpt, *self.LONG, stdout=head.stdin)
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
        self.tally["faults"] += 1
        stopped = harness.parse_lines("stopped", err)
        state = self.load(ckpt)
        ok = proc.returncode == 130 and stopped and state and state[1] == stopped[0]["step"]
        print(f"  piped Ctrl-C: exit {proc.returncode}, checkpoint {state}", flush=True)
        if not ok or "Traceback" in err:
            self.problem(f"piped Ctrl-C: exit {proc.returncode}, checkpoint {state}, {err[-300:]}")

    def parent_sigkill(self):
        """SIGKILL of the trainer mid-training: no process of the run may be left."""
        ckpt = self.fresh("orphans")
        tag = f"soak-{os.getpid()}-{time.monotonic_ns()}"
        proc = self.host_trainer(ckpt, *self.LONG, tag=tag)
        try:
            proc.out.wait_for(lambda line: harness.parse_line("progress", line), 300)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            gone = procs.wait_until(lambda: not procs.pids_with_env("MNIST_HOGWILD_SOAK", tag), 3)
        finally:
            for pid in procs.pids_with_env("MNIST_HOGWILD_SOAK", tag):
                os.kill(pid, signal.SIGKILL)
        self.tally["faults"] += 1
        print(f"  parent SIGKILL: every process of the run gone within 3 s: {gone}", flush=True)
        if not gone:
            self.problem("parent SIGKILL left processes of the run alive")

    def concurrent_run(self):
        """A second run on a checkpoint in use: refused with one line; the first goes on.

        The premise (the first run holds the lock while the second starts) is
        held, not hoped for: the first run is paused (SIGSTOP to its process
        group) for as long as the second takes, however slow the machine."""
        ckpt = self.fresh("concurrent")
        first = self.host_trainer(ckpt, "--log-interval", "5")
        paused = False
        try:
            first.out.wait_for(lambda line: harness.parse_line("progress", line), 300)
            os.killpg(first.pid, signal.SIGSTOP)
            paused = first.poll() is None  # still running, now paused: it holds the lock
            second = subprocess.run(
                [sys.executable, MAIN, *self.host_common, "--checkpoint", ckpt],
                cwd=self.work, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            paused = paused and first.poll() is None
            os.killpg(first.pid, signal.SIGCONT)
            first.wait(timeout=900)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
        self.tally["faults"] += 1
        errors = second.stderr.strip().splitlines()
        ok = second.returncode == 2 and len(errors) == 1 and "in use by another run" in errors[0]
        print(
            f"  concurrent run: second exit {second.returncode} while the first was paused "
            f"({paused}), first exit {first.returncode}",
            flush=True,
        )
        if not paused:
            self.problem("concurrent run: the first run ended before the second tried the lock")
        elif not ok or first.returncode != 0:
            self.problem(f"concurrent run: {second.returncode} {errors} / first {first.returncode}")

    def history_property(self, steps):
        """The model history's property test (tests/test_history.py), longer than CI's."""
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/test_history.py", "-k", "random_sequence"],
            cwd=repo, env={**os.environ, "HISTORY_STEPS": str(steps)},
            capture_output=True, text=True,
        )  # fmt: skip
        last = proc.stdout.strip().splitlines()[-1:] or ["no output"]
        print(f"  {2 * steps} random steps: {last[0]}", flush=True)
        if proc.returncode != 0:
            self.problem(f"model history property test: {proc.stdout[-1500:]}")

    def sighup(self):
        ckpt = self.fresh("sighup")
        proc = self.host_trainer(ckpt, *self.LONG)
        try:
            proc.out.wait_for(lambda line: harness.parse_line("progress", line), 300)
            os.kill(proc.pid, signal.SIGHUP)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        self.tally["faults"] += 1
        state = self.load(ckpt)
        print(f"  SIGHUP: exit {proc.returncode}, checkpoint {state}", flush=True)
        if proc.returncode != 129 or state is None:
            self.problem(f"SIGHUP: exit {proc.returncode}, checkpoint {state}")

    def memory_limited_evaluation(self):
        """--test-batch-size far beyond what fits: evaluation stays bounded."""
        ckpt = self.fresh("eval-memory")
        code, out = self.runner.run(
            [*self.common, "--checkpoint", self.runner.path(ckpt), "--test-batch-size", "100000"],
            docker_args=["--memory", "600m", "--memory-swap", "600m"],
        )
        self.tally["faults"] += 1
        print(f"  --test-batch-size 100000 under --memory 600m: exit {code}", flush=True)
        if code != 0:
            self.problem(f"memory-limited evaluation: exit {code}, {out[-300:]}")

    def check_clean_failure(self, label, code, out, ckpt, before, expect_code):
        self.tally["faults"] += 1
        errors = [line for line in out.splitlines() if "error:" in line]
        unchanged = open(ckpt, "rb").read() == before
        ok = code == expect_code and len(errors) >= 1 and "Traceback" not in out and unchanged
        print(
            f"  {label}: exit {code}, checkpoint unchanged: {unchanged}; {errors[-1] if errors else out[-200:]}",
            flush=True,
        )
        if not ok:
            self.problem(f"{label}: exit {code}, unchanged {unchanged}, output: {out[-300:]}")


def prepare_data(work, quick):
    data_dir = os.path.join(work, "data")
    # Copies, not links: the containers see only their volume.
    if not quick and harness.link_fashion(data_dir, copy=True):
        return data_dir, "fashion-mnist", "Fashion-MNIST (60k/10k)"
    harness.write_synthetic(data_dir, train=12800, test=1000)
    return data_dir, "mnist", "synthetic (12.8k/1k)"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="3 of each fault on small synthetic data (CI)"
    )
    p.add_argument("-k", type=int, help="stops and kills to inject (default: 20, --quick: 3)")
    p.add_argument(
        "--host", action="store_true", help="run the trainer directly instead of in Docker"
    )
    p.add_argument(
        "--image",
        default=os.environ.get("IMAGE", "mnist-hogwild:grading"),
        help="image to test (default: $IMAGE or mnist-hogwild:grading)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the fault moments (default: 0)")
    p.add_argument(
        "--out",
        default=os.path.join(harness.REPO, "docs"),
        help="where soak.md/json go (default: docs/)",
    )
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the table in docs/reliability.md",
    )
    args = p.parse_args()
    k = args.k or (3 if args.quick else 20)
    docker = not args.host
    work = tempfile.mkdtemp(prefix="mnist-hogwild-soak-")
    os.chmod(work, 0o777)
    started = time.monotonic()
    try:
        data_dir, dataset, data_label = prepare_data(work, args.quick)
        runner = DockerRunner(args.image, work) if docker else HostRunner(work)
        epochs = "2" if args.quick else "3"
        soak = Soak(runner, work, data_dir, dataset, epochs, k, random.Random(args.seed))
        print(
            f"soak: {'docker ' + args.image if docker else 'host'}; data {data_label}; k={k}",
            flush=True,
        )
        base_ckpt, base_acc = soak.baseline()
        accuracies = {}
        print(
            "docker stop at random moments:" if docker else "SIGINT at random moments:", flush=True
        )
        ckpt = soak.interrupt_chain("stop", interval="2")
        accuracies["after stops"] = soak.finish(ckpt)
        print("SIGKILL at random moments (--checkpoint-interval 1):", flush=True)
        ckpt = soak.interrupt_chain("kill", interval="1")
        accuracies["after kills"] = soak.finish(ckpt)
        print("a worker killed from outside:", flush=True)
        soak.worker_kill()
        print("checkpoint volume full:", flush=True)
        soak.disk_full()
        print("checkpoint volume not writable:", flush=True)
        soak.unwritable(docker)
        if docker:
            print("container memory limit too small:", flush=True)
            soak.memory_limit()
        print("bad inputs:", flush=True)
        soak.bad_inputs(base_ckpt, data_dir, docker)
        print("a user's terminal (the trainer on the host):", flush=True)
        soak.piped_ctrl_c()
        soak.parent_sigkill()
        soak.concurrent_run()
        soak.sighup()
        if not args.quick:  # (CI runs 200 steps per seed in pytest already)
            print("the model history under random runs, kills and overwrites:", flush=True)
            soak.history_property(5000)
        if docker:
            print("evaluation under a memory limit:", flush=True)
            soak.memory_limited_evaluation()
        t = soak.tally
        for label, acc in accuracies.items():
            if acc is not None and abs(acc - base_acc) > 0.02:
                soak.problem(
                    f"accuracy {label} {100 * acc:.2f}% vs uninterrupted {100 * base_acc:.2f}%"
                )
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "mode": f"docker ({args.image})" if docker else "host",
            "data": data_label,
            "k": k,
            "seed": args.seed,
            "faults": t["faults"],
            "unreadable_checkpoints": t["unreadable"],
            "resumes_failed": t["resumes_failed"],
            "progress_went_back": t["went_back"],
            "max_lost_per_kill_s": max(t["lost_s"], default=0.0),
            "stop_to_exit_median_s": statistics.median(t["stop_s"]) if t["stop_s"] else None,
            "stop_to_exit_max_s": max(t["stop_s"], default=None),
            "stop_phases": t["phases"],
            "accuracy_uninterrupted": base_acc,
            "accuracy_after_faults": accuracies,
            "problems": t["problems"],
            "minutes": (time.monotonic() - started) / 60,
        }
        md = table(result, args)
        print(md)
        os.makedirs(args.out, exist_ok=True)
        suffix = "-quick" if args.quick else ""
        with open(os.path.join(args.out, f"soak{suffix}.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(args.out, f"soak{suffix}.md"), "w") as f:
            f.write(md)
        if args.update_docs:
            harness.update_doc("docs/reliability.md", "soak", "\n" + md)
        return 1 if t["problems"] else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(r, args):
    accs = ", ".join(
        f"{k} {100 * v:.2f}%" for k, v in r["accuracy_after_faults"].items() if v is not None
    )
    stop = (
        f"{r['stop_to_exit_median_s']:.2f} s / {r['stop_to_exit_max_s']:.2f} s"
        if r["stop_to_exit_median_s"] is not None
        else "-"
    )
    lines = [
        f"Soak of {r['date']}: {r['mode']}, data {r['data']}, {r['k']} stops and {r['k']} kills, "
        f"seed {r['seed']}, {r['minutes']:.0f} min (`python tests/soak.py{' --quick' if args.quick else ''}"
        f"{' --host' if args.host else ''}`).",
        "",
        "| measure | result | goal |",
        "| --- | ---: | ---: |",
        f"| faults injected | {r['faults']} | |",
        f"| checkpoints unreadable | {r['unreadable_checkpoints']} | 0 |",
        f"| resumes failed | {r['resumes_failed']} | 0 |",
        f"| progress went backwards | {r['progress_went_back']} | 0 |",
        f"| most work lost per SIGKILL (--checkpoint-interval 1) | {r['max_lost_per_kill_s']:.2f} s | <= 1 s + 1 batch |",
        f"| stop to exit, median / max | {stop} | <= 2 s |",
        f"| where the stops landed | {', '.join(f'{k}: {v}' for k, v in sorted(r['stop_phases'].items()))} | |",
        f"| test accuracy: uninterrupted / after faults | {100 * r['accuracy_uninterrupted']:.2f}% / {accs} | within 2 points |",
        f"| problems | {len(r['problems'])} | 0 |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
