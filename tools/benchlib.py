"""What the benchmark scripts share (scripts/benchmark.py,
scripts/time_to_accuracy.py): the data they measure on, memory sampling,
medians, a competing load, the Docker numbers, the figures' canvas, and the
header of every result (date, machine, data)."""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

import psutil

import harness
from harness import flags
from mnist_hogwild.core import cpus

TARGETS = {"mnist": 98.0, "fashion-mnist": 82.0, "synthetic": 90.0}  # test accuracy, %


def choose_data(work, smoke):
    """(data_dir, dataset, label): real MNIST if present, else Fashion-MNIST, else synthetic."""
    if smoke:
        harness.write_synthetic(work, train=1280, test=200)
        return work, "mnist", "synthetic"
    return harness.bench_data(work)


def pss_kb(pid):
    """Proportional set size: shared pages (torch libraries, the mapped data) count once overall."""
    try:
        return psutil.Process(pid).memory_full_info().pss // 1024
    except psutil.Error:
        return 0


def shm_used():
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class MemorySampler:
    """Polls the trainer's total PSS and /dev/shm use every second (reading smaps is
    not free: faster polling showed up in the throughput) and whenever asked;
    keeps the peaks. A sample of a process tree that is not alive is an error."""

    def __init__(self, pid):
        self.pid, self.peak = pid, {"pss_kb": 0, "shm_bytes": 0}
        self.shm_before = shm_used()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def sample(self):
        pids = [self.pid] + harness.descendants(self.pid)
        # The trainer and its workers; not multiprocessing's resource tracker.
        total = sum(pss_kb(p) for p in pids if "resource_tracker" not in _cmdline(p))
        self.peak["pss_kb"] = max(self.peak["pss_kb"], total)
        self.peak["shm_bytes"] = max(self.peak["shm_bytes"], shm_used() - self.shm_before)
        return total

    def _run(self):
        while not self.done.wait(1.0):
            self.sample()

    def stop(self):
        self.done.set()
        self.thread.join()
        if self.sample() == 0:
            raise RuntimeError(f"the trainer (pid {self.pid}) was gone when its memory was read")
        return self.peak


def _cmdline(pid):
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def median_of(runs, key):
    return statistics.median(r[key] for r in runs)


def busy_loop():
    """A competing process that keeps one core busy."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def new_figure(width, height):
    """(figure, axes) of WIDTH x HEIGHT inches, drawn with Agg: matplotlib is a
    development dependency, imported only for the plots."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height), layout="tight")
    return fig, fig.subplots()


def docker_numbers(data_dir, dataset, image, work):
    if not harness.image_exists(image):
        return None
    size = int(harness.docker("inspect", "--format", "{{.Size}}", image, check=True).stdout)
    name = f"bench-{os.getpid()}"
    os.makedirs(os.path.join(work, "docker"), exist_ok=True)
    volumes = [
        (os.path.realpath(data_dir), "/data", "ro"),
        (os.path.join(work, "docker"), "/workspace"),
    ]
    started = time.monotonic()
    argv = flags(data_dir="/data", dataset=dataset, epochs=1, log_interval=20)
    start_detached(image, argv, volumes, name)
    try:
        first_batch = seconds_until(name, "ready", started)
        seconds_until(name, "progress", started)
        t = time.monotonic()
        harness.docker("stop", name, check=True)
        stop_s = time.monotonic() - t
    finally:
        harness.docker("rm", "-f", name)
    return {
        "image": image,
        "image_mb": size / 1e6,
        "container_first_batch_s": first_batch,
        "one_core_first_batch_s": one_core_first_batch(image, volumes, dataset),
        "docker_stop_s": stop_s,
        **autograder_flow(data_dir, dataset, image, work),
    }


def start_detached(image, argv, volumes, name, docker_args=()):
    run = harness.docker_run(
        image, *argv, volumes=volumes, name=name, detach=True, docker_args=list(docker_args)
    )
    subprocess.run(run, check=True, capture_output=True)


def seconds_until(name, kind, started, timeout=120):
    """Seconds from STARTED until container NAME's log holds a KIND line; None
    if it does not within TIMEOUT."""
    while time.monotonic() - started < timeout:
        if harness.parse_lines(kind, harness.docker("logs", name).stdout):
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def one_core_first_batch(image, volumes, dataset):
    """docker run to the first batch in a one-core container (`--cpus 1`, one
    process), as a one-CPU pod or each node of cluster_bench.py starts."""
    name = f"bench-one-core-{os.getpid()}"
    started = time.monotonic()
    argv = flags(
        data_dir="/data",
        dataset=dataset,
        epochs=1,
        num_processes=1,
        checkpoint="/workspace/one-core.pth",
    )
    start_detached(image, argv, volumes, name, ["--cpus", "1"])
    try:
        return seconds_until(name, "ready", started)
    finally:
        harness.docker("rm", "-f", name)


def autograder_flow(data_dir, dataset, image, work):
    """The course autograder's two runs with the default flags: train.py, then
    train.py --resume, in containers, timed together."""
    run_dir = os.path.join(work, "autograder")
    os.makedirs(run_dir)
    folder = harness.data.DATASETS[dataset].folder
    shutil.copytree(os.path.join(data_dir, folder), os.path.join(run_dir, "data", folder))
    extra = ["--dataset", dataset] if dataset != "mnist" else []
    base = harness.docker_run(
        image, "python", "/opt/mnist-hogwild/train.py", *extra, volumes=[(run_dir, "/workspace")]
    )
    started = time.monotonic()
    subprocess.run(base, check=True, capture_output=True)
    subprocess.run(base + ["--resume"], check=True, capture_output=True)
    seconds = time.monotonic() - started
    metrics = harness.epoch_rows(os.path.join(run_dir, "model_checkpoint.metrics.jsonl"))
    return {
        "autograder_s": seconds,
        "autograder_epochs": len(metrics),
        "autograder_accuracy": metrics[-1]["accuracy_percent"],
    }


@contextmanager
def bench_run(data_dir, smoke):
    """(work folder, data_dir, dataset, result header): a scratch folder
    removed afterwards, the data measured on (DATA_DIR as MNIST, else as
    choose_data finds it), and what every result records first."""
    usable = cpus.usable_cpus()
    work = tempfile.mkdtemp(prefix="mnist-hogwild-bench-")
    try:
        if data_dir:
            dataset, label = "mnist", "mnist"
        else:
            data_dir, dataset, label = choose_data(work, smoke)
        print(f"data: {label} in {data_dir}; usable CPUs: {usable}", flush=True)
        header = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores ({usable} usable), {os.uname().machine}, "
            f"torch {harness.torch_version()}",
            "data": label,
            "usable_cpus": usable,
            "commit": commit(),
            **compute_figures(usable),
        }
        yield work, data_dir, dataset, header
    finally:
        shutil.rmtree(work, ignore_errors=True)


def commit():
    """The commit measured (short), "+changes" if tracked files differ from it."""
    git = ["git", "-C", harness.REPO]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"], capture_output=True).returncode
    return (head.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def compute_figures(threads):
    """What the fraction of the machine's peak is made from: the network's
    FLOPs per training sample (forward and backward, as torch's
    FlopCounterMode counts them) and this machine's fp32 peak, a large matmul
    on THREADS threads (the best of a few)."""
    import torch  # noqa: PLC0415 - the scripts' other figures come from subprocesses
    import torch.nn.functional as F  # noqa: PLC0415
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    from model import Net  # noqa: PLC0415

    x, y = torch.zeros(64, 1, 28, 28), torch.zeros(64, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.nll_loss(Net()(x), y).backward()
    before, n = torch.get_num_threads(), 2048
    torch.set_num_threads(threads)
    a, b, best = torch.randn(n, n), torch.randn(n, n), float("inf")
    for _ in range(6):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    torch.set_num_threads(before)
    return {
        "flops_per_sample": counter.get_total_flops() / len(y),
        "peak_gflops": 2 * n**3 / best / 1e9,
    }


def save_json(result, out, name):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
