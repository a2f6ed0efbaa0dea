#!/usr/bin/env python3
"""Measure jobs of 2, 3 and 4 nodes against one node, as containers that share
this machine's cores equally, and print the table that --sync-every and
--node-updates are chosen from.

    python scripts/cluster_bench.py [--update-docs]    # about 20 minutes on 2 cores
    python scripts/cluster_bench.py --wall-pairs 3 --dataset fashion-mnist --epochs 6

Real MNIST (../shared/data, else Debian's Fashion-MNIST, else synthetic), 3
epochs, batch 64, one process per node, so that a job's accuracy is the same
on every run. Runs: 1 node with 2 processes on all the cores (the reference
a user compares with), 1 node x 1 process on one core, and N nodes x
(cores / N) for each --node-updates:--sync-every pair. Writes
docs/cluster.{md,json} and, with --update-docs, the cluster table in
docs/performance.md. Needs the image (--image) and an idle machine.

--wall-pairs N instead runs N pairs, one after the other: the reference, then
2 nodes x (cores / 2) with the defaults; it prints each pair's wall times and
their ratio (pairs, because this machine's speed drifts between runs) and
writes OUT/cluster_wall.{md,json}.
"""

import argparse
import contextlib
import datetime
import functools
import json
import os
import subprocess
import tempfile
import sys
import time

# What the scripts share with the tests (harness, procs, synthetic_data) lives in tools/.
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
import harness
from mnist_hogwild.core import loglines
from harness import docker, docker_run


def node_command(args, work, data, net, name, nodes, k, mode, cpus, processes=1):
    flags = ["--data-dir", "/data", "--dataset", args.dataset, "--epochs", args.epochs]
    if args.seed is not None:
        flags += ["--seed", args.seed]
    flags += ["--num-processes", processes, "--log-interval", "1000", "--checkpoint-interval", "0"]
    flags += ["--checkpoint", f"/workspace/{name}/model_checkpoint.pth"]
    if nodes > 1:
        flags += ["--nnodes", nodes, "--rdzv-endpoint", "node0:29400", "--sync-every", k]
        flags += ["--node-updates", mode]
    return docker_run(
        args.image,
        *flags,
        volumes=[(work, "/workspace"), (data, "/data", "ro")],
        name=f"{net}-{name}",
        detach=True,
        docker_args=["--network", net, "--hostname", name, "--cpus", f"{cpus:g}"],
    )


def seconds_between(start, stamp):
    """Seconds from Docker's StartedAt to a `docker logs -t` time stamp (both RFC 3339, UTC)."""

    def parse(text):  # nanoseconds do not fit datetime: keep microseconds
        head, _, frac = text.rstrip("Z").partition(".")
        return datetime.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}")

    return (parse(stamp) - parse(start)).total_seconds()


def one_job(args, work, data, net, nodes, k=0, mode="average", cpus=1.0, processes=1):
    """Start NODES containers together, wait for all; returns what node0
    measured, the wall time from the `docker run`s to the last exit, and the
    time from node0's start to its first batch."""
    names = [f"node{i}" for i in range(nodes)]
    for name in names:
        subprocess.run(["rm", "-rf", os.path.join(work, name)], check=True)
    node = functools.partial(node_command, args, work, data, net)
    commands = [node(n, nodes, k, mode, cpus, processes) for n in names]
    # All at once, as separate machines would start: one after the other, the
    # later nodes' container start-up (docker's, not ours) would be counted too.
    started = time.monotonic()
    runs = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands
    ]
    for run, cmd in zip(runs, commands, strict=True):
        if run.wait() != 0:
            raise SystemExit(f"{' '.join(map(str, cmd))} failed: {run.stderr.read().decode()}")
    codes = [docker("wait", f"{net}-{name}").stdout.strip() for name in names]
    wall = time.monotonic() - started
    logs = docker("logs", "-t", f"{net}-node0").stdout
    start = docker("inspect", "--format", "{{.State.StartedAt}}", f"{net}-node0").stdout.strip()
    for name in names:
        docker("rm", "-f", f"{net}-{name}")
    if codes != ["0"] * nodes:
        raise SystemExit(f"a node failed (exit codes {codes}):\n{logs[-2000:]}")
    stamped = [line.split(" ", 1) for line in logs.splitlines() if " " in line]
    ready = [s for s, text in stamped if loglines.parse_line("ready", text)]
    text = "\n".join(text for _, text in stamped)  # (without the time stamps)
    rows, syncs, cadence = (
        loglines.parse_lines(kind, text) for kind in ("epoch", "syncs", "cadence")
    )
    return {
        "nodes": nodes,
        "cpus_per_node": cpus,
        "processes": processes,
        "sync_every": k or None,
        "node_updates": mode if nodes > 1 else None,
        "samples_per_s": sum(r["samples_per_s"] for r in rows) / len(rows),
        "accuracy": rows[-1]["accuracy"] / 100,
        "accuracy_per_epoch": [r["accuracy"] / 100 for r in rows],
        "wall_s": round(wall, 1),
        "first_batch_s": round(seconds_between(start, ready[0]), 2) if ready else None,
        "sync_percent": syncs[0]["percent"] if syncs else 0.0,
        "sync_s": syncs[0]["seconds"] if syncs else 0.0,
        "syncs": syncs[0]["syncs"] if syncs else 0,
        "auto_k": cadence[0]["k"] if cadence else None,
    }


def measured(args, label, **rows):
    """A result: when and on what it was measured, then ROWS."""
    result = {"date": time.strftime("%Y-%m-%d"), "data": label, "epochs": args.epochs}
    return {**result, "cores": args.cores, "seed": args.seed, **rows}


def seed_flag(result):
    """The --seed of RESULT's command line, if not the default."""
    return f" --seed {result['seed']}" if result.get("seed") is not None else ""


def markdown(result):
    reference = result["reference"]
    lines = [
        f"Measured {result['date']}: containers on one {result['cores']}-core machine sharing its "
        f"cores equally (`--cpus`), {result['data']}, {result['epochs']} epochs, batch 64, "
        f"one process per node (so each job's accuracy is the same on every run). One run "
        f"per row: wall times and samples/s are noisy (a row's wall time moved by up to a "
        f"quarter between two runs of this table) (`python scripts/cluster_bench.py"
        f"{seed_flag(result)}`). "
        f"Reference: one node with "
        f"{reference['processes']} Hogwild processes on all {result['cores']} cores, "
        f"{100 * reference['accuracy']:.2f}% in {reference['wall_s']:.0f} s.",
        "",
        "| nodes x cores | --node-updates | --sync-every | accuracy | vs reference | wall | "
        "first batch | samples/s | time in syncs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in [reference, result["one_node"], *result["runs"]]:
        shape = f"{r['nodes']} x {r['cpus_per_node']:g}"
        every = r["sync_every"] or "-"
        if r.get("auto_k"):
            every = f"auto (ended at {r['auto_k']})"
        if r["processes"] > 1:
            shape += f" ({r['processes']} processes)"
        lines.append(
            f"| {shape} | {r['node_updates'] or '-'} | {every} | "
            f"{100 * r['accuracy']:.2f}% | {100 * (r['accuracy'] - reference['accuracy']):+.2f} | "
            f"{r['wall_s']:.0f} s | {r['first_batch_s']} s | {r['samples_per_s']:.0f} | "
            f"{r['sync_percent']:.1f}% ({r['syncs']} syncs) |"
        )
    return "\n".join(lines) + "\n"


RUNS = "sum:5,sum:10,sum:50,sum:auto,average:5,average:10,average:50"
# (flag, argparse options): every default is in its help as %(default)s.
FLAGS = (
    ("--image", dict(default="mnist-hogwild:grading", help="image to run (default: %(default)s)")),
    ("--nodes", dict(default="2,3,4", help="node counts (default: %(default)s)")),
    ("--runs", dict(default=RUNS, help="--node-updates:--sync-every pairs (default: %(default)s)")),
    ("--dataset", dict(default="mnist", choices=("mnist", "fashion-mnist"))),
    ("--epochs", dict(type=int, default=3, help="(default: %(default)s)")),
    ("--seed", dict(type=int, help="every job's --seed (default: the trainer's)")),
    ("--cores", dict(type=int, default=os.cpu_count(), help="(default: all)")),
    ("--out", dict(default=os.path.join(harness.REPO, "docs"), help="(default: docs/)")),
    (
        "--render",
        dict(
            action="store_true",
            help="write the tables again from OUT/cluster.json, " "without running anything",
        ),
    ),
    (
        "--update-docs",
        dict(action="store_true", help="rewrite the cluster table in docs/performance.md"),
    ),
    (
        "--wall-pairs",
        dict(
            type=int,
            default=0,
            metavar="N",
            help="only N pairs: the reference, "
            "then 2 nodes with the defaults (default: %(default)s)",
        ),
    ),
)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, options in FLAGS:
        p.add_argument(name, **options)
    args = p.parse_args()
    if args.wall_pairs:
        return wall_pairs(args)
    if args.render:
        with open(os.path.join(args.out, "cluster.json")) as f:
            return write(json.load(f), args)
    with bench_network(args) as (work, data, label, net):
        reference = one_job(args, work, data, net, 1, cpus=args.cores, processes=args.cores)
        print(f"1 node, {args.cores} processes: {reference}", flush=True)
        one = one_job(args, work, data, net, 1)
        print(f"1 node x 1 core: {one}", flush=True)
        runs = []
        for nodes in map(int, args.nodes.split(",")):
            for mode, k in (pair.split(":") for pair in args.runs.split(",")):
                cpus = round(args.cores / nodes, 2)
                k = k if k == "auto" else int(k)
                runs.append(one_job(args, work, data, net, nodes, k, mode, cpus))
                print(f"{nodes} nodes, {mode}, K={k}: {runs[-1]}", flush=True)
    result = measured(args, label, reference=reference, one_node=one, runs=runs)
    write(result, args)


@contextlib.contextmanager
def bench_network(args):
    """(scratch dir, data dir, data label, network) for the jobs; removed afterwards."""
    net = f"cluster-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as work:
        os.chmod(work, 0o777)
        data, _, label = harness.bench_data(os.path.join(work, "data"), args.dataset, copy=True)
        docker("network", "create", net, check=True)
        try:
            yield work, data, label, net
        finally:
            docker("network", "rm", net)


def wall_pairs(args):
    """--wall-pairs: end-to-end wall time of 2 nodes against the reference, in pairs."""
    pairs = []
    with bench_network(args) as (work, data, label, net):
        for _ in range(args.wall_pairs):
            one = one_job(args, work, data, net, 1, cpus=args.cores, processes=args.cores)
            two = one_job(args, work, data, net, 2, "auto", "sum", round(args.cores / 2, 2))
            pairs.append({"reference": one, "two_nodes": two})
            print(
                f"pair {len(pairs)}: {one['wall_s']} s, {two['wall_s']} s: "
                f"{two['wall_s'] / one['wall_s']:.2f}x",
                flush=True,
            )
    result = measured(args, label, pairs=pairs)
    rows = [
        f"Measured {result['date']}: {label}, {args.epochs} epochs, on this machine's "
        f"{args.cores} cores: one container with {args.cores} Hogwild processes, then 2 "
        f"containers started together (`--cpus {args.cores / 2:g}` each, the defaults: `--node-updates sum "
        f"--sync-every auto`), {len(pairs)} pairs one after the other "
        f"(`python scripts/cluster_bench.py --wall-pairs {len(pairs)} --dataset {args.dataset} "
        f"--epochs {args.epochs}{seed_flag(result)}`).",
        "",
        "| pair | 1 node: wall, accuracy | 2 nodes: wall, accuracy, first batch, syncs | ratio |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for i, pair in enumerate(pairs, 1):
        one, two = pair["reference"], pair["two_nodes"]
        rows.append(
            f"| {i} | {one['wall_s']:.0f} s, {100 * one['accuracy']:.2f}% | "
            f"{two['wall_s']:.0f} s, {100 * two['accuracy']:.2f}%, {two['first_batch_s']:.1f} s, "
            f"{two['sync_percent']:.1f}% (K ended at {two['auto_k']}) | "
            f"{two['wall_s'] / one['wall_s']:.2f}x |"
        )
    save(args.out, "cluster_wall", result, "\n".join(rows) + "\n")


def save(out, stem, result, md):
    """Print MD; write OUT/STEM.json (RESULT) and OUT/STEM.md."""
    print(md)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(md)


def write(result, args):
    md = markdown(result)
    save(args.out, "cluster", result, md)
    if args.update_docs:
        harness.update_doc("docs/performance.md", "cluster", "\n" + md)


if __name__ == "__main__":
    main()
