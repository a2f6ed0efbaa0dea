"""What every scenario of the soak shares (tests/soak.py runs them): where a
trainer runs (DockerRunner: in containers; HostRunner: on the host), and
Soak, the tally of faults and problems with the checks every scenario makes
(the checkpoint loads, progress never goes back, --resume completes as well
as an uninterrupted run). A scenario is a module beside this one with a
function per fault that takes the Soak."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import harness
from harness import MAIN, docker, docker_run
from procs import LineReader

from mnist_hogwild.training import checkpoint
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

    # ----- faults on the host (a user's terminal, not a container) --------
    # A run that a fault must find still training: more epochs than any fault
    # test waits for, so that it is still going however slow the machine.
    LONG = ("--log-interval", "5", "--epochs", "1000")

    def host_trainer(self, ckpt, *flags, tag=None, stdout=subprocess.PIPE):
        env = {**os.environ, "MNIST_HOGWILD_SOAK": tag} if tag else None
        argv = [sys.executable, MAIN, *self.host_common, "--checkpoint", ckpt, *map(str, flags)]
        proc = subprocess.Popen(
            argv,
            cwd=self.work,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        proc.out = LineReader(proc.stdout) if stdout == subprocess.PIPE else None
        proc.err = LineReader(proc.stderr)
        return proc

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
