#!/usr/bin/env python3
"""Measure mnist-hogwild and print (and save) a table.

    python scripts/benchmark.py                 # full run, ~15 min on 2 cores
    python scripts/benchmark.py --smoke         # seconds, tiny synthetic data (tests use it)
    python scripts/benchmark.py --update-docs # also rewrite the tables in docs/performance.md
    python scripts/benchmark.py --from-json docs/benchmark.json --update-docs  # redraw only

Data: MNIST under ./data if present, else Debian's Fashion-MNIST
(/usr/share/datasets/fashion-mnist), else synthetic. Every number is the
median of --repeats runs of the real trainer in subprocesses. Time only on an
idle machine: another busy process on a 2-core box changes everything.
Writes docs/benchmark.json, docs/benchmark.md and docs/scaling.png.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil

# What the scripts share with the tests (harness, procs, synthetic_data) lives in tools/.
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
import harness
from harness import REPO, TrainerProcess, flags

from mnist_hogwild.core import cpus  # (found through the path harness sets)

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


def one_epoch(data_dir, dataset, workers, threads, work, measure_memory=False):
    """Throughput (and memory) of one epoch. The run is given far more epochs
    than it trains and is stopped after the first, so that the memory is
    sampled while every process of it is provably alive, however fast the
    machine (a run that ends before the sampler looks would read as 0 MB)."""
    ckpt = os.path.join(work, f"bench-{workers}x{threads}.pth")
    harness.remove_run_files(ckpt)
    t = TrainerProcess(
        flags(
            data_dir=data_dir,
            dataset=dataset,
            epochs=1000,
            num_processes=workers,
            threads_per_process=threads,
            checkpoint=ckpt,
            checkpoint_interval="0",
            log_interval="50",
        ),
        cwd=work,
    )
    sampler = MemorySampler(t.proc.pid) if measure_memory else None
    reported = t.wait_for("ready")[2]["seconds"]
    if sampler:
        sampler.sample()  # training has begun: every worker exists
    t.wait_for("epoch")
    memory = sampler.stop() if sampler else {"pss_kb": 0, "shm_bytes": 0}
    t.proc.send_signal(signal.SIGINT)
    t.finish()
    row = harness.epoch_rows(ckpt.replace(".pth", ".metrics.jsonl"))[0]
    return {
        "samples_per_s": row["samples_per_s"],
        "epoch_seconds": row["seconds"],
        "first_batch_s": reported,
        "pss_mb": memory["pss_kb"] / 1024,
        "shm_mb": memory["shm_bytes"] / 2**20,
    }


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


def stop_timing(data_dir, dataset, work):
    ckpt = os.path.join(work, "bench-stop.pth")
    harness.remove_run_files(ckpt)
    t = TrainerProcess(
        # Many epochs: the stop must land mid-training even on tiny smoke data.
        flags(data_dir=data_dir, dataset=dataset, epochs=100, checkpoint=ckpt, log_interval=5),
        cwd=work,
    )
    t.wait_for("progress")
    time.sleep(0.5)
    sent = time.monotonic()
    t.proc.send_signal(signal.SIGINT)
    out = t.finish()
    exit_s = time.monotonic() - sent
    save_ms = harness.parse_lines("stopped", out)[0]["ms"]
    return {
        "sigint_to_exit_s": exit_s,
        "save_ms": save_ms,
        "checkpoint_bytes": os.path.getsize(ckpt),
    }


def full_run(data_dir, dataset, label, work, epochs, processes=2, device="cpu"):
    """A whole run (defaults but EPOCHS and PROCESSES), timed from outside:
    where the wall time goes (start-up, training, evaluation, epoch
    boundaries, exit) and when the target accuracy was first reached."""
    ckpt = os.path.join(work, f"bench-run-{processes}.pth")
    harness.remove_run_files(ckpt)
    options = dict(data_dir=data_dir, dataset=dataset, epochs=epochs, num_processes=processes)
    options.update(device=device, checkpoint=ckpt, log_interval=10**9)
    t = TrainerProcess(flags(**options), cwd=work)
    target, reached, seen = TARGETS[label], None, {}
    while "done" not in seen:
        elapsed, kind, fields = t.wait_for("ready", "epoch", "done", timeout=1800)
        seen[kind] = (elapsed, fields)
        if kind == "epoch" and reached is None and fields["accuracy"] >= target:
            reached = {"epoch": fields["epoch"], "wall_s": elapsed}
    t.finish()
    wall = time.monotonic() - t.t0
    with open(harness.beside.metrics(ckpt)) as f:
        rows = [json.loads(line) for line in f]
    training = sum(r["seconds"] for r in rows)
    evaluation = sum(r["eval_seconds"] for r in rows)
    startup, done = seen["ready"][0], seen["done"][0]
    return {
        "processes": processes,
        "epochs": epochs,
        "wall_s": wall,
        "startup_s": startup,  # process start to the ready line, as seen from outside
        "first_batch_s": seen["ready"][1]["seconds"],  # as the trainer reports it
        "training_s": training,
        "evaluation_s": evaluation,
        "boundaries_s": done - startup - training - evaluation,
        "exit_s": wall - done,
        "samples_per_s": statistics.median(r["samples_per_s"] for r in rows),
        "target": target,
        "reached": reached,
        "accuracy_per_epoch": [r["accuracy_percent"] for r in rows],
        "metrics_file": harness.beside.metrics(ckpt),
    }


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


def markdown(result):
    lines = [
        f"Measured {result['date']} on {result['machine']}, data: {result['data']}, "
        f"batch 64, the sample's Net; medians of {result['repeats']} runs "
        f"(`python scripts/benchmark.py`).",
        "",
        "| processes x threads | samples/s | epoch (s) | scaling vs 1x1 | memory PSS (MB) | /dev/shm (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = result["throughput"][0]["samples_per_s"]
    for row in result["throughput"]:
        n = row["processes"]
        lines.append(
            f"| {n} x {row['threads']} | {row['samples_per_s']:.0f} | {row['epoch_seconds']:.1f} | "
            f"{row['samples_per_s'] / base:.2f}x ({100 * row['samples_per_s'] / base / n:.0f}% per process) | "
            f"{row['pss_mb']:.0f} | {row['shm_mb']:.1f} |"
        )
    c = result["contention"]
    if c:
        lines += [
            "",
            "With another process keeping one core busy: "
            + ", ".join(f"{k}: {v:.0f} samples/s" for k, v in c.items())
            + ".",
        ]
    single = [r for r in result["throughput"] if r["threads"] == 1]
    if len(single) > 1:
        a, b = single[0], single[-1]
        extra = (b["pss_mb"] - a["pss_mb"]) / (b["processes"] - a["processes"])
        lines += [
            "",
            f"Each extra process adds about {extra:.0f} MB PSS ({a['processes']} -> "
            f"{b['processes']} processes): workers forked from the trainer share torch's "
            f"memory with it until they write to it, and the data set is memory-mapped and "
            f"counted once.",
        ]
    return "\n".join(lines + timing_rows(result)) + "\n"


def facts(result):
    """(what, value) of each fixed cost the benchmark measured, in docs' words."""
    s, acc, d = result["stop"], result["accuracy"], result["docker"]
    hit = acc["reached"]
    rows = [
        ("start of run to first training batch", f"{result['first_batch_s']:.1f} s"),
        ("SIGINT to exit (checkpoint saved)", f"{s['sigint_to_exit_s']:.2f} s"),
        ("checkpoint save", f"{s['save_ms']:.0f} ms, {s['checkpoint_bytes'] / 1024:.0f} KiB"),
        (
            f"time to {acc['target']:.0f}% test accuracy (defaults, process start to that epoch's "
            "line)",
            f"epoch {hit['epoch']}, {hit['wall_s']:.0f} s wall" if hit else "not reached",
        ),
    ]
    if d:
        one = d.get("one_core_first_batch_s")
        rows += [
            (f"image size ({d['image']})", f"{d['image_mb']:.0f} MB"),
            ("container start to first batch", f"{d['container_first_batch_s']:.1f} s"),
            ("the same, one core (`--cpus 1`, 1 process)", f"{one:.1f} s" if one else "-"),
            ("docker stop", f"{d['docker_stop_s']:.2f} s"),
            (
                f"autograder flow (`train.py`, then `train.py --resume`, {d['autograder_epochs']} "
                f"epochs)",
                f"{d['autograder_s']:.0f} s, test accuracy {d['autograder_accuracy']:.2f}%",
            ),
        ]
    return rows


def timing_rows(result):
    """The benchmark's second table: start, stop, save, accuracy and Docker rows."""
    return ["", "| what | value |", "| --- | ---: |"] + [f"| {a} | {b} |" for a, b in facts(result)]


def new_figure(width, height):
    """(figure, axes) of WIDTH x HEIGHT inches, drawn with Agg: matplotlib is a
    development dependency, imported only for the plots."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height), layout="tight")
    return fig, fig.subplots()


def plot_scaling(result, path):
    rows = [r for r in result["throughput"] if r["threads"] == 1]
    xs = [r["processes"] for r in rows]
    fig, ax = new_figure(5, 3.5)
    ax.plot(xs, [r["samples_per_s"] for r in rows], "o-", label="measured")
    ax.plot(
        xs,
        [rows[0]["samples_per_s"] * min(x, result["usable_cpus"]) for x in xs],
        "--",
        label=f"linear up to {result['usable_cpus']} CPUs",
    )
    ax.set_xlabel("--num-processes (1 thread each)")
    ax.set_ylabel("training samples/s")
    ax.set_title(f"Hogwild scaling, {result['data']}")
    ax.set_xticks(xs)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def breakdown_markdown(rows, result):
    """Where a whole run's wall time goes, one row per process count."""
    lines = [
        f"Whole runs on {result['machine']}, {result['data']}, {rows[0]['epochs']} epochs "
        f"(`python scripts/benchmark.py{' --breakdown ' + ','.join(str(r['processes']) for r in rows) if len(rows) > 1 else ''}`):",
        "",
        "| processes | wall (s) | start-up to first batch | training | evaluation | epoch boundaries | exit | samples/s | final accuracy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        parts = ("startup_s", "training_s", "evaluation_s", "boundaries_s", "exit_s")
        shares = [f"{r[k]:.1f} s ({100 * r[k] / r['wall_s']:.0f}%)" for k in parts]
        lines.append(
            f"| {r['processes']} | {r['wall_s']:.1f} | {' | '.join(shares)} | "
            f"{r['samples_per_s']:.0f} | {r['accuracy_per_epoch'][-1]:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def plot_breakdown(rows, path):
    """A stacked bar per process count: start-up, training, evaluation, the rest."""
    parts = [("startup_s", "start-up"), ("training_s", "training"), ("evaluation_s", "evaluation")]
    parts += [("boundaries_s", "epoch boundaries"), ("exit_s", "exit")]
    labels = [str(r["processes"]) for r in rows]
    fig, ax = new_figure(7, 0.6 * len(rows) + 2.2)
    left = [0.0] * len(rows)
    for key, name in parts:
        values = [max(r[key], 0.0) for r in rows]
        ax.barh(labels, values, left=left, label=name)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlabel("seconds")
    ax.set_ylabel("--num-processes")
    ax.set_title(f"Where a {rows[0]['epochs']}-epoch run's time goes")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=5)
    fig.savefig(path, dpi=100)


def readme_summary(result):
    """README's few lines: what the default run costs and reaches, and the
    fixed costs a user notices."""
    acc, d = result["accuracy"], result["docker"] or {}
    wall = acc["wall_s"]
    lines = [
        f"The first command downloads MNIST into `./data/MNIST/raw` (or uses the files there) "
        f"and trains the default {acc['epochs']} epochs on 2 processes: {wall:.0f} s on "
        f"{result['machine']} (the host), to {acc['accuracy_per_epoch'][-1]:.2f}% test "
        f"accuracy ({result['data']}); measured by `python scripts/benchmark.py`, which "
        f"writes [docs/performance.md](docs/performance.md).",
    ]
    if d:
        lines[0] += (
            f" In the image the course autograder's two runs (`train.py`, then `train.py "
            f"--resume`) took {d['autograder_s']:.0f} s and reached "
            f"{d['autograder_accuracy']:.2f}%."
        )
    return "\n".join(lines)


# The facts README shows (the rest are in docs/performance.md): the start of
# their name in performance.md's table, and their name in README's.
README_FACTS = {
    "start of run": "start to first batch",
    "SIGINT": "Ctrl-C to exit, checkpoint saved",
    "the same, one core": "container start to first batch, `--cpus 1`",
    "docker stop": "`docker stop`",
    "image size": "image",
}


def perf_summary(result):
    two = next(r for r in result["throughput"] if (r["processes"], r["threads"]) == (2, 1))
    rows = [("training, 1 process", f"{result['throughput'][0]['samples_per_s']:.0f} samples/s")]
    rows += [("training, 2 processes", f"{two['samples_per_s']:.0f} samples/s")]
    found = dict(facts(result))
    for start, label in README_FACTS.items():
        rows += [(label, b) for a, b in found.items() if a.startswith(start)]
    body = "\n".join(f"| {a} | {b} |" for a, b in rows)
    return (
        f"On {result['machine']}, {result['data']} (`python scripts/benchmark.py`; the "
        f"tables and plots are in [docs/performance.md](docs/performance.md)):\n\n"
        f"| what | measured |\n| --- | ---: |\n{body}\n"
    )


def publish(result, args):
    """Write benchmark.md and the plots (and the docs' sections) from RESULT."""
    os.makedirs(args.out, exist_ok=True)
    md = markdown(result) if "throughput" in result else ""
    md += "\n" + breakdown_markdown(result["breakdown"], result)
    name = "benchmark" if "throughput" in result else "breakdown"
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(md)
    if "throughput" in result:
        plot_scaling(result, os.path.join(args.out, "scaling.png"))
    try:
        plot_breakdown(result["breakdown"], os.path.join(args.out, f"{name}.png"))
    except ImportError:
        print("note: no matplotlib here: the table and JSON are written, the plot is not")
    print(md)
    if args.update_docs and "throughput" in result:
        harness.update_doc("docs/performance.md", "benchmark", "\n" + md)
        harness.update_doc("README.md", "quickstart", "\n" + readme_summary(result) + "\n")
        harness.update_doc("README.md", "perf", "\n" + perf_summary(result))


# ----- time to accuracy (--time-to-accuracy) ---------------------------------
TTA_TARGETS = (98.0, 99.0)


def recipe_options(spec):
    """--recipes entry SPEC: "NAME[:EPOCHS] [FLAG VALUE ...]": the recipe, with
    --epochs EPOCHS if given, and any train flags after it (an ablation)."""
    head, *extra = shlex.split(spec)
    name, _, epochs = head.partition(":")
    return dict(recipe=name, epochs=int(epochs) if epochs else None), extra


def recipe_label(spec):
    options, extra = recipe_options(spec)
    epochs = f" --epochs {options['epochs']}" if options["epochs"] else ""
    return " ".join([options["recipe"] + epochs, *extra])


def accuracy_curve(data_dir, dataset, work, recipe, processes, seed, device):
    """One run of RECIPE (a --recipes entry), to the end of its planned epochs or
    the last target: [(seconds since the command, epoch, accuracy %, staleness,
    samples/s)], as far as it got (a collapsed run stops with exit 1)."""
    ckpt = os.path.join(work, f"tta-{processes}-{seed}.pth")
    harness.remove_run_files(ckpt)
    chosen, extra = recipe_options(recipe)
    options = dict(data_dir=data_dir, dataset=dataset, seed=seed, **chosen)
    options.update(num_processes=processes, device=device, checkpoint=ckpt, log_interval=10**9)
    options.update(target_accuracy=max(TTA_TARGETS), checkpoint_interval=0)
    t = TrainerProcess(flags(**options) + extra, cwd=work)
    curve, kind = [], None
    while kind != "done":
        try:
            elapsed, kind, fields = t.wait_for("epoch", "done", timeout=3600)
        except RuntimeError:  # it ended without "done": its error line is the last
            print(t.tail(1), end="")
            break
        if kind == "epoch":
            f = fields
            curve.append((elapsed, f["epoch"], f["accuracy"], f["staleness"], f["samples_per_s"]))
    t.finish(ok=(0, 1))
    return curve


def first_reaching(curve, target):
    """(epoch, seconds) of the first evaluation at or above TARGET, or None."""
    return next(((e, s) for s, e, a, *_ in curve if a >= target), None)


def tta_row(recipe, processes, curves):
    row = {"recipe": recipe, "processes": processes, "runs": len(curves), "curves": curves}
    for target in TTA_TARGETS:
        hits = [first_reaching(c, target) for c in curves]
        reached = [h for h in hits if h is not None]
        row[f"to_{target:g}"] = {
            "reached": len(reached),
            "epochs": [h[0] for h in reached],
            "seconds": [round(h[1], 1) for h in reached],
        }
    row["best"] = [max((p[2] for p in c), default=None) for c in curves]  # None: it stopped
    # Per seed, after the first epoch: accuracy (None: stopped), staleness, samples/s.
    for i, key in ((2, "epoch_1"), (3, "staleness"), (4, "samples_per_s")):
        row[key] = [c[0][i] if c else None for c in curves]
    return row


def add_ratios(rows):
    """Each row's median seconds to 98% against the sample recipe's at the same
    process count, from the same benchmark run ("vs_sample": how many times faster)."""
    sample = {r["processes"]: r["to_98"]["seconds"] for r in rows if r["recipe"] == "sample"}
    for r in rows:
        mine, theirs = r["to_98"]["seconds"], sample.get(r["processes"])
        if mine and theirs and r["to_98"]["reached"] == r["runs"]:
            r["vs_sample"] = round(statistics.median(theirs) / statistics.median(mine), 1)
    return rows


def measure_time_to_accuracy(args, data_dir, dataset, work):
    rows = []
    for recipe in recipe_specs(args.recipes):
        for processes in (int(n) for n in args.processes.split(",")):
            curves = []
            for seed in range(1, args.repeats + 1):
                curve = accuracy_curve(
                    data_dir, dataset, work, recipe, processes, seed, args.device
                )
                print(f"{recipe}, {processes} processes, seed {seed}: {curve}", flush=True)
                curves.append(curve)
            rows.append(tta_row(recipe_label(recipe), processes, curves))
    return {"time_to_accuracy": add_ratios(rows), "device": args.device}


def recipe_specs(given):
    """--recipes' entries: several words, or one comma-separated word."""
    return given[0].split(",") if len(given) == 1 and " " not in given[0] else given


def _spread(values, unit=""):
    if not values:
        return "-"
    med = statistics.median(values)
    text = f"{med:g}{unit}"
    return text if min(values) == max(values) else f"{text} ({min(values):g}-{max(values):g})"


def per_seed(row):
    """Accuracy after the first epoch, seed by seed ("stopped": the run ended first)."""
    seeds = row.get("epoch_1", [])
    return " / ".join("stopped" if a is None else f"{a:.2f}" for a in seeds) or "-"


def _times(row):
    return f"{row['vs_sample']:g}x" if "vs_sample" in row else "-"


def reached(target):
    """A cell: the epochs to TARGET over the seeds, and how many runs reached it."""

    def cell(row):
        hits = row[f"to_{target:g}"]
        missed = "" if hits["reached"] == row["runs"] else f" ({hits['reached']} of {row['runs']})"
        return _spread(hits["epochs"]) + missed

    return cell


def _seeds(key, unit="", digits=1):
    return lambda row: _spread([round(v, digits) for v in row.get(key, []) if v is not None], unit)


# (header, cell) of the time-to-accuracy table; README's has the ones in README_COLUMNS.
TTA_COLUMNS = (
    ("recipe", lambda r: r["recipe"]),
    ("processes", lambda r: str(r["processes"])),
    ("after epoch 1, per seed", per_seed),
    ("staleness", _seeds("staleness")),
    ("samples/s", _seeds("samples_per_s", digits=-2)),
    ("epochs to 98%", reached(98)),
    ("seconds to 98%", lambda r: _spread(r["to_98"]["seconds"], " s")),
    ("faster", _times),
    ("epochs to 99%", reached(99)),
    ("seconds to 99%", lambda r: _spread(r["to_99"]["seconds"], " s")),
    ("best", _seeds("best", "%", digits=2)),
)
README_COLUMNS = ("recipe", "processes", "epochs to 98%", "seconds to 98%", "faster", "best")


def table(rows, columns=TTA_COLUMNS):
    lines = [
        "| " + " | ".join(h for h, _ in columns) + " |",
        "| --- |" + " ---: |" * (len(columns) - 1),
    ]
    return lines + ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]


def tta_markdown(result):
    intro = (
        f"Time to accuracy on {result['machine']}, {result['data']}, --device "
        f"{result['device']}; each cell: median (min-max) over the seeds, seconds from the "
        f"command to the epoch line; runs stop at 99% or their last epoch; staleness: the "
        f"others' batches that landed while a batch was computed, the epoch's mean; faster: the "
        f"sample recipe's median seconds to 98% over this row's, at the same process count, in "
        f"the same run (`python scripts/benchmark.py --time-to-accuracy`)."
    )
    return "\n".join([intro, "", *table(result["time_to_accuracy"])]) + "\n"


def plot_time_to_accuracy(result, path):
    fig, ax = new_figure(6.5, 4)
    colours = {"sample": "tab:blue", "fast": "tab:orange", "fast --epochs 3": "tab:green"}
    for r in result["time_to_accuracy"]:
        for i, curve in enumerate(r["curves"]):
            many = "es" if r["processes"] > 1 else ""
            label = f"{r['recipe']}, {r['processes']} process{many}" if i == 0 else None
            style = {1: ":", 2: "-", 4: "--"}.get(r["processes"], "-.")
            colour = colours.get(r["recipe"], "tab:gray")
            xs, ys = [c[0] for c in curve], [c[2] for c in curve]
            ax.plot(xs, ys, style, marker="o", markersize=3, color=colour, label=label, alpha=0.8)
    for target in TTA_TARGETS:
        ax.axhline(target, color="gray", linewidth=0.8)
    ax.set_ylim(90, 100)
    ax.set_xlabel("seconds since the command")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Time to accuracy, {result['data']}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def plot_processes(result, path):
    """Accuracy after one epoch against the process count, one line per recipe
    (the median over the seeds; each seed a dot, a run that stopped at 10%)."""
    fig, ax = new_figure(6.5, 4)
    by_recipe = {}
    for r in result["time_to_accuracy"]:
        by_recipe.setdefault(r["recipe"], []).append(r)
    for recipe, rows in by_recipe.items():
        seeds = [[10.0 if a is None else a for a in r["epoch_1"]] for r in rows]
        xs = [r["processes"] for r in rows]
        (line,) = ax.plot(xs, [statistics.median(v) for v in seeds], "-", label=recipe)
        for x, values in zip(xs, seeds, strict=True):
            ax.plot([x] * len(values), values, "o", color=line.get_color(), alpha=0.5)
    ax.axhline(98, color="gray", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["processes"] for r in result["time_to_accuracy"]}))
    ax.xaxis.set_major_formatter("{x:.0f}")
    ax.set_xlabel(f"--num-processes (on {result['usable_cpus']} cores)")
    ax.set_ylabel("test accuracy after one epoch (%; stopped: 10)")
    ax.set_title(f"One epoch at each process count, {result['data']}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def publish_time_to_accuracy(result, args):
    md = tta_markdown(result)
    with open(os.path.join(args.out, "time_to_accuracy.md"), "w") as f:
        f.write(md)
    try:
        plot_time_to_accuracy(result, os.path.join(args.out, "time_to_accuracy.png"))
        if len({r["processes"] for r in result["time_to_accuracy"]}) > 3:
            plot_processes(result, os.path.join(args.out, "processes.png"))
    except ImportError:
        print("note: no matplotlib here: the table and JSON are written, the plot is not")
    print(md)
    if args.update_docs:
        harness.update_doc("docs/performance.md", "time-to-accuracy", "\n" + md)
        harness.update_doc("README.md", "recipes", "\n" + recipes_summary(result))


def recipes_summary(result):
    """README's table: each recipe at 2 processes (or the most common count)."""
    rows = [r for r in result["time_to_accuracy"] if r["processes"] == 2]
    columns = [c for c in TTA_COLUMNS if c[0] in README_COLUMNS]
    return "\n".join(table(rows or result["time_to_accuracy"], columns)) + "\n"


# (flag, argparse options): every flag's default is in its help as %(default)s.
FLAGS = (
    ("--repeats", dict(type=int, default=3, help="runs per measurement (default: %(default)s)")),
    ("--smoke", dict(action="store_true", help="tiny synthetic data, 1 repeat, no Docker")),
    ("--out", dict(default=os.path.join(REPO, "docs"), help="output folder (default: docs/)")),
    ("--image", dict(default="mnist-hogwild:grading", help="image for the Docker numbers")),
    (
        "--accuracy-epochs",
        dict(
            type=int,
            default=10,
            help="epochs of the whole run that finds "
            "the time to the target accuracy (default: %(default)s)",
        ),
    ),
    (
        "--breakdown",
        dict(
            metavar="N,N,...",
            help="measure only whole runs at these process "
            "counts (e.g. 1,2,4,8,16 on a 16-core machine) and write "
            "breakdown.md/json/png; no Docker, no matplotlib needed but for the plot",
        ),
    ),
    (
        "--breakdown-epochs",
        dict(type=int, default=16, help="epochs per --breakdown run (default: %(default)s)"),
    ),
    (
        "--device",
        dict(
            default="cpu",
            choices=("cpu", "cuda"),
            help="--device of the --breakdown "
            "runs (default: %(default)s, also on a machine with a GPU)",
        ),
    ),
    ("--data-dir", dict(metavar="DIR", help="MNIST data root (default: found as documented)")),
    ("--update-docs", dict(action="store_true", help="rewrite the tables in docs/performance.md")),
    (
        "--time-to-accuracy",
        dict(
            action="store_true",
            help="measure only epochs and seconds to "
            "98%% and 99%% for --recipes at --processes, --repeats seeds "
            "each; writes time_to_accuracy.md/json/png",
        ),
    ),
    (
        "--recipes",
        dict(
            nargs="+",
            default=["sample,fast,fast:3"],
            help="recipes to run: NAME, "
            "NAME:N for --epochs N, and train flags after it, as one word each "
            "('fast --dropout 0.5'); or NAME,NAME:N,... (default: %(default)s)",
        ),
    ),
    ("--processes", dict(default="1,2,4", help="(default: %(default)s)")),
    (
        "--from-json",
        dict(
            metavar="FILE",
            help="measure nothing: redraw the table, plot and "
            "README sections from a saved benchmark.json",
        ),
    ),
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, options in FLAGS:
        p.add_argument(name, **options)
    return p.parse_args()


def measure_throughput(args, data_dir, dataset, work, repeats, usable):
    configs = (
        [(1, 1), (2, 1)] if args.smoke else sorted({(1, 1), (2, 1), (4, 1), (usable, 1), (1, 2)})
    )
    throughput = []
    for workers, threads in configs:
        runs = [
            one_epoch(data_dir, dataset, workers, threads, work, measure_memory=True)
            for _ in range(repeats)
        ]
        row = {"processes": workers, "threads": threads}
        row.update({k: median_of(runs, k) for k in runs[0]})
        print(f"{workers} x {threads}: {row}", flush=True)
        throughput.append(row)
    contention = {}
    if not args.smoke:
        burner = busy_loop()
        try:
            for workers, threads in ((1, 2), (2, 1)):
                runs = [
                    one_epoch(data_dir, dataset, workers, threads, work) for _ in range(repeats)
                ]
                contention[f"{workers} x {threads}"] = median_of(runs, "samples_per_s")
        finally:
            burner.kill()
        print(f"contention: {contention}", flush=True)
    return throughput, contention


def measure_all(args, data_dir, dataset, label, work, usable):
    repeats = 1 if args.smoke else args.repeats
    throughput, contention = measure_throughput(args, data_dir, dataset, work, repeats, usable)
    stops = [stop_timing(data_dir, dataset, work) for _ in range(repeats)]
    stop = {k: median_of(stops, k) for k in stops[0]}
    print(f"stop: {stop}", flush=True)
    epochs = 2 if args.smoke else args.accuracy_epochs
    accuracy = full_run(data_dir, dataset, label, work, epochs)
    print(f"accuracy: {accuracy['accuracy_per_epoch']} reached {accuracy['reached']}", flush=True)
    shutil.copy(accuracy.pop("metrics_file"), os.path.join(args.out, "metrics.jsonl"))
    docker = None if args.smoke else docker_numbers(data_dir, dataset, args.image, work)
    return {
        "repeats": repeats,
        "throughput": throughput,
        "first_batch_s": next(r["first_batch_s"] for r in throughput if r["processes"] == 2),
        "contention": contention,
        "stop": stop,
        "accuracy": accuracy,
        "breakdown": [accuracy],
        "docker": docker,
    }


def measure_breakdown(args, data_dir, dataset, label, work):
    rows = []
    for processes in (int(n) for n in args.breakdown.split(",")):
        row = full_run(
            data_dir, dataset, label, work, args.breakdown_epochs, processes, args.device
        )
        row.pop("metrics_file")
        print(f"{processes} processes: {row}", flush=True)
        rows.append(row)
    return {"breakdown": rows}


def main():
    args = parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
        (
            publish_time_to_accuracy(result, args)
            if "time_to_accuracy" in result
            else publish(result, args)
        )
        return
    usable = cpus.usable_cpus()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="mnist-hogwild-bench-")
    try:
        if args.data_dir:
            data_dir, dataset, label = args.data_dir, "mnist", "mnist"
        else:
            data_dir, dataset, label = choose_data(work, args.smoke)
        print(f"data: {label} in {data_dir}; usable CPUs: {usable}", flush=True)
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores ({usable} usable), {os.uname().machine}, "
            f"torch {harness.torch_version()}",
            "data": label,
            "usable_cpus": usable,
        }
        if args.time_to_accuracy:
            result.update(measure_time_to_accuracy(args, data_dir, dataset, work))
            with open(os.path.join(args.out, "time_to_accuracy.json"), "w") as f:
                json.dump(result, f, indent=2)
            publish_time_to_accuracy(result, args)
            return
        if args.breakdown:
            result.update(measure_breakdown(args, data_dir, dataset, label, work))
        else:
            result.update(measure_all(args, data_dir, dataset, label, work, usable))
        name = "breakdown" if args.breakdown else "benchmark"
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(result, f, indent=2)
        publish(result, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
