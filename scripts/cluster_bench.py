#!/usr/bin/env python3
"""Measure several nodes against one, as containers with --cpus 1 each, and
choose --sync-every from the numbers (issue 10).

    python scripts/cluster_bench.py [--update-docs]    # about 4 minutes on 2 cores

Real Fashion-MNIST from Debian (else synthetic), 2 epochs, batch 64, one
process per node. Runs: 1 node x 1 core; 2 nodes x 1 core at several K;
and, for the accuracy reference, 1 node with 2 processes on 2 cores. Writes
docs/cluster.{md,json} and, with --update-docs, the cluster table in docs/performance.md.
Needs the image (--image) and an idle machine.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import harness
from harness import docker, docker_run

EPOCHS = 2


def node_command(image, work, net, name, nodes, k, extra=(), mode="average"):
    flags = ["--data-dir", "/workspace/data", "--dataset", "fashion-mnist", "--epochs", EPOCHS]
    flags += ["--num-processes", "1", "--log-interval", "1000", "--checkpoint-interval", "0"]
    flags += ["--checkpoint", f"/workspace/{name}/model_checkpoint.pth", *extra]
    if nodes > 1:
        flags += ["--nnodes", nodes, "--rdzv-endpoint", "node0:29400", "--sync-every", k]
        flags += ["--node-updates", mode]
    cpus = "2" if "--num-processes" in extra else "1"  # the 2-process reference gets 2 cores
    docker_args = ["--network", net, "--hostname", name, "--cpus", cpus]
    return docker_run(
        image,
        *flags,
        volumes=[(work, "/workspace")],
        name=f"{net}-{name}",
        detach=True,
        docker_args=docker_args,
    )


def median_job(repeats, *args, **kwargs):
    """one_job REPEATS times: the median samples/s and sync share (the
    accuracy, with one process per node, is the same every time)."""
    runs = [one_job(*args, **kwargs) for _ in range(repeats)]
    row = dict(runs[0])
    for key in ("samples_per_s", "sync_percent"):
        row[key] = statistics.median(r[key] for r in runs)
    row["samples_per_s_runs"] = [round(r["samples_per_s"]) for r in runs]
    return row


def one_job(image, work, net, nodes, k=0, extra=(), mode="average"):
    """Start NODES containers, wait for all; returns what node0 measured."""
    names = [f"node{i}" for i in range(nodes)]
    for name in names:
        subprocess.run(["rm", "-rf", os.path.join(work, name)], check=True)
        cmd = node_command(image, work, net, name, nodes, k, extra, mode)
        subprocess.run(cmd, check=True, capture_output=True)
    codes = [docker("wait", f"{net}-{name}").stdout.strip() for name in names]
    logs = docker("logs", f"{net}-node0").stdout
    for name in names:
        docker("rm", "-f", f"{net}-{name}")
    if codes != ["0"] * nodes:
        raise SystemExit(f"a node failed (exit codes {codes}):\n{logs[-2000:]}")
    rows = [harness.parse_line("epoch", line) for line in logs.splitlines()]
    rows = [r for r in rows if r]
    syncs = harness.parse_lines("syncs", logs)
    return {
        "nodes": nodes,
        "sync_every": k or None,
        "node_updates": mode if nodes > 1 else None,
        "samples_per_s": sum(r["samples_per_s"] for r in rows) / len(rows),
        "accuracy": rows[-1]["accuracy"] / 100,
        "sync_percent": syncs[0]["percent"] if syncs else 0.0,
        "syncs": syncs[0]["syncs"] if syncs else 0,
    }


def markdown(result):
    base = result["one_node"]["samples_per_s"]
    reference = result["reference"]["accuracy"]
    lines = [
        f"Measured {result['date']}: containers with `--cpus 1` each on one 2-core machine, "
        f"{result['data']}, {EPOCHS} epochs, batch 64, one process per node; samples/s and "
        f"time in syncs are medians of {result['repeats']} runs, whose spread was wide on this "
        f"machine (`python scripts/cluster_bench.py`). Reference accuracy: one node with 2 "
        f"processes on 2 cores, {100 * reference:.2f}%.",
        "",
        "| nodes x cores | --node-updates | --sync-every | samples/s | vs 1 x 1 | time in syncs | accuracy | vs reference |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in [result["one_node"], *result["runs"]]:
        lines.append(
            f"| {r['nodes']} x 1 | {r['node_updates'] or '-'} | {r['sync_every'] or '-'} | "
            f"{r['samples_per_s']:.0f} | "
            f"{r['samples_per_s'] / base:.2f}x | {r['sync_percent']:.1f}% ({r['syncs']} syncs) | "
            f"{100 * r['accuracy']:.2f}% | {100 * (r['accuracy'] - reference):+.2f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="mnist-hogwild:grading", help="image to run")
    p.add_argument(
        "--runs",
        default="average:10,average:50,average:200,sum:10,sum:50",
        help="--node-updates:--sync-every pairs (default: average:10,average:50,average:200,"
        "sum:10,sum:50)",
    )
    p.add_argument("--out", default=os.path.join(harness.REPO, "docs"), help="(default: docs/)")
    p.add_argument("--repeats", type=int, default=3, help="runs per row; medians (default: 3)")
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the cluster table in docs/performance.md",
    )
    args = p.parse_args()
    net = f"cluster-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as work:
        os.chmod(work, 0o777)
        data = os.path.join(work, "data")
        label = "Fashion-MNIST (60k/10k)"
        if not harness.link_fashion(data, copy=True):
            harness.write_synthetic(data, train=60000, test=10000)
            label = "synthetic (60k/10k)"
        docker("network", "create", net, check=True)
        try:
            one = median_job(args.repeats, args.image, work, net, 1)
            print(f"1 node x 1 core: {one}", flush=True)
            reference = one_job(args.image, work, net, 1, extra=["--num-processes", "2"])
            print(f"1 node, 2 processes: {reference}", flush=True)
            runs = []
            for mode, k in (pair.split(":") for pair in args.runs.split(",")):
                runs.append(median_job(args.repeats, args.image, work, net, 2, int(k), mode=mode))
                print(f"2 nodes, {mode}, K={k}: {runs[-1]}", flush=True)
        finally:
            docker("network", "rm", net)
    result = {"date": time.strftime("%Y-%m-%d"), "data": label, "one_node": one}
    result["repeats"] = args.repeats
    result.update(reference=reference, runs=runs)
    md = markdown(result)
    print(md)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cluster.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "cluster.md"), "w") as f:
        f.write(md)
    if args.update_docs:
        harness.update_doc("docs/performance.md", "cluster", "\n" + md)


if __name__ == "__main__":
    main()
