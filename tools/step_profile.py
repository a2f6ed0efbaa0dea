#!/usr/bin/env python3
"""Where one training step's time goes: samples/s of model.py's Net, forward,
backward and the optimizer's step, on one thread (one Hogwild worker's
share), in torch's default layout and in channels-last (the layout the
training model uses on the CPU, learn/device.py), at several batch sizes,
layouts taking turns; then torch's profiler's top operators for each layout.

    python tools/step_profile.py                  # the table and the profiles
    python tools/step_profile.py --compile        # torch.compile too, its compile time counted

Time only on an idle machine; the numbers are for comparing within one run.
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import Net  # noqa: E402
from mnist_hogwild.learn.device import training_layout  # noqa: E402

LAYOUTS = {
    "default": lambda model: model,
    "channels-last": lambda model: training_layout(model, torch.device("cpu")),
}


def stepper(layout, batch, compiled=False):
    """(one training step, seconds its first steps took) of a fresh Net."""
    model = LAYOUTS[layout](Net(0.1))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    forward = torch.compile(model) if compiled else model
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def step():
        optimizer.zero_grad()
        F.nll_loss(forward(x), y).backward()
        optimizer.step()

    started = time.perf_counter()
    for _ in range(3):
        step()
    return step, time.perf_counter() - started


def samples_per_s(step, batch, steps=40):
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def table(batches, repeats, compiled):
    variants = [(layout, False) for layout in LAYOUTS] + [("channels-last", True)] * compiled
    print("| batch | " + " | ".join(f"{v}{' compiled' * c}" for v, c in variants) + " |")
    print("| ---: |" + " ---: |" * len(variants))
    for batch in batches:
        rates = {v: [] for v in variants}
        steppers = {v: stepper(v[0], batch, v[1]) for v in variants}
        warm = {v: s[1] for v, s in steppers.items()}
        for _ in range(repeats):  # the variants take turns
            for v in variants:
                rates[v].append(samples_per_s(steppers[v][0], batch))
        cells = [f"{statistics.median(rates[v]):.0f}" for v in variants]
        cells[-1] += f" (first steps {warm[variants[-1]]:.1f} s)" if compiled else ""
        print(f"| {batch} | " + " | ".join(cells) + " |")


def profile(layout, batch):
    step, _ = stepper(layout, batch)
    with torch.profiler.profile() as prof:
        for _ in range(30):
            step()
    print(f"\n{layout}, batch {batch}: the operators' own CPU time, 30 steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="32,64,128", help="(default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="torch.compile too")
    args = p.parse_args()
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"samples/s on one thread, torch {torch.__version__}, medians of {args.repeats}:")
    table(batches, args.repeats, args.compile)
    for layout in LAYOUTS:
        profile(layout, max(batches))


if __name__ == "__main__":
    main()
