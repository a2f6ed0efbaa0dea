#!/usr/bin/env python3
"""Measure what training costs and print (and save) a table: throughput and
memory by process count, stop and save times, a whole run's wall time and
accuracy, the Docker numbers (time to accuracy by recipe is
scripts/time_to_accuracy.py).

    python scripts/benchmark.py                 # full run, ~15 min on 2 cores
    python scripts/benchmark.py --smoke         # seconds, tiny synthetic data (tests use it)
    python scripts/benchmark.py --update-docs   # also rewrite the tables in docs/performance.md
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
import shutil
import signal
import statistics
import sys
import time

# What the scripts share with the tests (harness, procs, synthetic_data) and
# with each other (benchlib, benchreport) lives in tools/.
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
import benchlib
import benchreport
import harness
from benchlib import TARGETS, MemorySampler, busy_loop, docker_numbers, median_of
from harness import REPO, TrainerProcess, flags


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
            benchreport.publish(json.load(f), args)
        return
    with benchlib.bench_run(args.data_dir, args.smoke) as (work, data_dir, dataset, result):
        label, usable = result["data"], result["usable_cpus"]
        if args.breakdown:
            result.update(measure_breakdown(args, data_dir, dataset, label, work))
        else:
            os.makedirs(args.out, exist_ok=True)
            result.update(measure_all(args, data_dir, dataset, label, work, usable))
        benchlib.save_json(result, args.out, "breakdown" if args.breakdown else "benchmark")
        benchreport.publish(result, args)


if __name__ == "__main__":
    main()
