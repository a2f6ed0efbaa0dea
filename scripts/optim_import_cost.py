#!/usr/bin/env python3
"""What torch.optim's first use costs a fresh process, against optimizers.py's own
optimizers: the reason this project does not use torch.optim in its workers.

    python scripts/optim_import_cost.py [--repeats N]

Each measurement is a fresh interpreter that imports torch, builds a small
model and takes one optimizer step; the table gives the medians of the
step's wall time (the import of torch itself is the same for both and left
out), and whether the step imported torch._dynamo.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = """
import json, sys, time
import torch
sys.path.insert(0, sys.argv[2])
from mnist_hogwild.learn import optimizers
model = torch.nn.Linear(4, 2)
started = time.perf_counter()
params = list(model.parameters())
if sys.argv[1] == "torch.optim.SGD":
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.5)
elif sys.argv[1] == "torch.optim.Adam":
    opt = torch.optim.Adam(params, lr=0.1)
else:
    name = "adam" if sys.argv[1].split(".")[-1].lower() == "adam" else "sgd"
    opt = optimizers.make(name, params, 0.1, 0.5)
model(torch.zeros(1, 4)).sum().backward()
opt.step()
print(json.dumps({"seconds": time.perf_counter() - started, "dynamo": "torch._dynamo" in sys.modules}))
"""


def measure(kind, repeats):
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, kind, REPO], capture_output=True, text=True, check=True
        ).stdout
        runs.append(json.loads(out))
    return statistics.median(r["seconds"] for r in runs), runs[0]["dynamo"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="fresh processes per kind (default: 5)")
    args = p.parse_args()
    print("| optimizer | first step in a fresh process (median) | imports torch._dynamo |")
    print("| --- | ---: | --- |")
    for kind in (
        "optimizers.MomentumSGD",
        "torch.optim.SGD",
        "optimizers.Adam",
        "torch.optim.Adam",
    ):
        seconds, dynamo = measure(kind, args.repeats)
        print(f"| `{kind}` | {seconds:.3f} s | {'yes' if dynamo else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
