#!/usr/bin/env python3
"""Seconds from the command to its exit of `python main.py --recipe fast
--target-accuracy 98` at 2 processes, at an earlier commit and at this
checkout, taking turns in one run, and the saved model's test accuracy.

    python tools/time_to_target.py --before ea742d2 --data-dir DATA_DIR

The earlier commit is checked out in a temporary git worktree; every run
trains in a scratch folder of its own. Time only on an idle machine.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINAL = re.compile(r"final accuracy ([\d.]+)%")


def one_run(tree, data_dir, processes, work):
    """(seconds, test accuracy of the model it saved) of one run of TREE's main.py."""
    folder = tempfile.mkdtemp(dir=work)
    flags = ["--data-dir", data_dir, "--recipe", "fast", "--target-accuracy", "98"]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, os.path.join(tree, "main.py"), *flags, "--num-processes", str(processes)],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    found = FINAL.search(proc.stdout)
    if proc.returncode != 0 or not found:
        sys.exit(f"error: {tree}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return seconds, float(found.group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the earlier commit")
    p.add_argument("--data-dir", required=True, help="MNIST data root")
    p.add_argument("--repeats", type=int, default=3, help="runs of each (default: %(default)s)")
    p.add_argument("--processes", type=int, default=2, help="(default: %(default)s)")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="time-to-target-")
    before = os.path.join(work, "before")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "-q", "--detach", before, args.before])
    try:
        runs = {args.before: [], "this checkout": []}
        for _ in range(args.repeats):  # taking turns
            runs[args.before].append(one_run(before, args.data_dir, args.processes, work))
            runs["this checkout"].append(one_run(REPO, args.data_dir, args.processes, work))
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", before])
        shutil.rmtree(work, ignore_errors=True)
    print("| code | seconds to exit, median (runs) | test accuracy (runs) |\n| --- | ---: | --- |")
    for name, results in runs.items():
        seconds, accuracy = zip(*results, strict=True)
        each = ", ".join(f"{s:.1f}" for s in seconds)
        print(f"| {name} | {statistics.median(seconds):.1f} s ({each}) | {accuracy} |")


if __name__ == "__main__":
    main()
