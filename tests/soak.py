#!/usr/bin/env python3
"""Fault-injection soak: stops, kills, full disks, bad inputs, and nothing lost.

    python tests/soak.py            # full soak: 20 of each, Fashion-MNIST if installed
    python tests/soak.py --quick    # the CI subset: 3 of each, small synthetic data
    python tests/soak.py --host     # without Docker: runs the trainer directly

Runs real containers (or the host trainer) through faults, one scenario a
module in tests/soak_scenarios/ (SCENARIOS below, in order), sharing
soak_scenarios/common.py. After each fault it checks that the checkpoint
loads, that progress never went backwards, and at the end that --resume
completes with a model as good as an uninterrupted run's. Prints a table and
writes it (and the raw numbers) to --out. Exits 1 if any goal is missed.
Needs root for the full-disk fault (a small tmpfs).
"""

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

# harness and procs, shared with the scripts, live in tools/.
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
import harness
from soak_scenarios import bad_inputs, history, memory, terminal, volumes, worker_kill
from soak_scenarios.common import DockerRunner, HostRunner, Soak, prepare_data
from soak_scenarios.stops_and_kills import interrupt_chain

# (what is said before it, the fault (soak, run), whether this run injects it):
# after the baseline and the stops and kills, in this order.
SCENARIOS = (
    ("a worker killed from outside", lambda s, run: worker_kill.worker_kill(s), lambda run: True),
    ("checkpoint volume full", lambda s, run: volumes.disk_full(s), lambda run: True),
    (
        "checkpoint volume not writable",
        lambda s, run: volumes.unwritable(s, run["docker"]),
        lambda run: True,
    ),
    (
        "container memory limit too small",
        lambda s, run: memory.memory_limit(s),
        lambda run: run["docker"],
    ),
    (
        "bad inputs",
        lambda s, run: bad_inputs.bad_inputs(s, run["base_ckpt"], run["data_dir"], run["docker"]),
        lambda run: True,
    ),
    (
        "a user's terminal (the trainer on the host)",
        lambda s, run: terminal.all_of_them(s),
        lambda run: True,
    ),
    (
        # (CI runs 200 steps per seed in pytest already)
        "the model history under random runs, kills and overwrites",
        lambda s, run: history.history_property(s, 5000),
        lambda run: not run["quick"],
    ),
    (
        "evaluation under a memory limit",
        lambda s, run: memory.memory_limited_evaluation(s),
        lambda run: run["docker"],
    ),
)


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
        accuracies["after stops"] = soak.finish(interrupt_chain(soak, "stop", interval="2"))
        print("SIGKILL at random moments (--checkpoint-interval 1):", flush=True)
        accuracies["after kills"] = soak.finish(interrupt_chain(soak, "kill", interval="1"))
        run = dict(docker=docker, quick=args.quick, base_ckpt=base_ckpt, data_dir=data_dir)
        for title, fault, wanted in SCENARIOS:
            if wanted(run):
                print(f"{title}:", flush=True)
                fault(soak, run)
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
