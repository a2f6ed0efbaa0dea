#!/usr/bin/env python3
"""GPU check, one command, for a machine with a GPU and no Docker (issue 9).

    python scripts/gpu_check.py --data-dir DIR [--out DIR]

DIR holds MNIST/raw (the four IDX files). It installs nothing and uses the
torch that is there. In about 2-3 minutes on an H200 it measures, with
--device cuda: samples/s and the time to the first batch at 1, 2, 4 and 8
processes (2 epochs each); a stop -> --resume cycle that must finish; the
GPU checkpoint loaded and evaluated on the CPU; the accuracy after 2 epochs
against a CPU run with the same settings; and a bitwise check that, with one
process and --deterministic, a stopped and resumed epoch equals an
uninterrupted one. Prints one table (and writes gpu_check.md/json to --out).
Exits 1 if a check fails.
"""

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time

import harness
from harness import Trainer, flags

import checkpoint  # (found through the path harness sets)
import data
import train
from model import Net


def run_epochs(data_dir, work, name, epochs, **options):
    """A whole run; returns (its metrics rows, the fields of its ready line)."""
    ckpt = os.path.join(work, f"{name}.pth")
    harness.remove_run_files(ckpt)
    t = Trainer(flags(data_dir=data_dir, epochs=epochs, checkpoint=ckpt, **options), cwd=work)
    ready = t.wait_for("ready", timeout=300)[2]
    t.wait_for("done", timeout=600)
    t.finish()
    with open(checkpoint.metrics_path(ckpt)) as f:
        return [json.loads(line) for line in f], ready, ckpt


def stop_then_resume(data_dir, work, name, epochs, **options):
    """SIGINT in the first epoch, then --resume to the end: (ok, what happened, checkpoint)."""
    ckpt = os.path.join(work, f"{name}.pth")
    harness.remove_run_files(ckpt)
    args = flags(data_dir=data_dir, epochs=epochs, checkpoint=ckpt, **options)
    t = Trainer(args, cwd=work)
    t.wait_for("progress", timeout=300)
    t.proc.send_signal(signal.SIGINT)
    out = t.finish()
    stopped = harness.parse_lines("stopped", out)
    if t.proc.returncode != 130 or not stopped:
        return False, f"stop: exit {t.proc.returncode}, no stopped line", ckpt
    t = Trainer([*args, "--resume"], cwd=work)
    t.wait_for("done", timeout=600)
    t.finish()
    state = checkpoint.load(ckpt, Net().state_dict())
    ok = t.proc.returncode == 0 and (state["epoch"], state["step"]) == (epochs, 0)
    return ok, f"stopped at batch {stopped[0]['step']}, resumed to epoch {state['epoch']}", ckpt


def evaluate_on_cpu(ckpt, data_dir):
    """The GPU run's checkpoint, loaded and evaluated on the CPU: its accuracy."""
    state = checkpoint.load(ckpt, Net().state_dict())
    model = Net()
    model.load_state_dict(state["model_state"])
    test = data.map_split(data.prepare(data_dir, "mnist")["test"])
    return train.evaluate(model, test, "mnist", 500, lambda: False)[1]


def same_weights(path_a, path_b):
    a = checkpoint.load(path_a, Net().state_dict())
    b = checkpoint.load(path_b, Net().state_dict())
    return all(torch_equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])


def torch_equal(x, y):
    return bool((x == y).all()) and x.shape == y.shape


def measure(data_dir, work):
    rows, checks = [], []
    for n in (1, 2, 4, 8):
        metrics, ready, ckpt = run_epochs(
            data_dir, work, f"gpu{n}", 2, device="cuda", num_processes=n, log_interval=100
        )
        rate = statistics.median(r["samples_per_s"] for r in metrics)
        rows.append((f"--device cuda, {n} processes", f"{rate:,.0f} samples/s", ""))
        rows.append((f"  first batch after start ({n})", f"{ready['seconds']:.1f} s", ""))
        if n == 2:
            gpu_accuracy, gpu_ckpt = metrics[-1]["accuracy"], ckpt
    cpu_metrics, _, _ = run_epochs(data_dir, work, "cpu", 2, device="cpu", num_processes=2)
    diff = 100 * abs(gpu_accuracy - cpu_metrics[-1]["accuracy"])
    checks.append(
        (
            "accuracy after 2 epochs, 2 processes: GPU vs CPU",
            f"{100 * gpu_accuracy:.2f}% vs {100 * cpu_metrics[-1]['accuracy']:.2f}%",
            diff <= 1.0,
        )
    )
    cpu_acc = evaluate_on_cpu(gpu_ckpt, data_dir)
    checks.append(
        (
            "GPU checkpoint evaluated on the CPU",
            f"{100 * cpu_acc:.2f}%",
            abs(cpu_acc - gpu_accuracy) < 0.002,
        )
    )
    ok, what, _ = stop_then_resume(data_dir, work, "stop", 2, device="cuda", log_interval=20)
    checks.append(("SIGINT -> checkpoint -> --resume on the GPU", what, ok))
    one = dict(device="cuda", num_processes=1, deterministic=True, log_interval=20)
    _, _, straight = run_epochs(data_dir, work, "straight", 1, **one)
    ok, what, resumed = stop_then_resume(data_dir, work, "resumed", 1, **one)
    bitwise = ok and same_weights(straight, resumed)
    checks.append(("1 process, --deterministic: stop+resume == straight", what, bitwise))
    return rows, checks


def table(rows, checks, started):
    import torch  # noqa: PLC0415 - for the versions only

    lines = [
        f"GPU check {time.strftime('%Y-%m-%d')}: {torch.cuda.get_device_name(0)}, torch "
        f"{torch.__version__}, {os.cpu_count()} CPUs, {time.monotonic() - started:.0f} s "
        f"(`python scripts/gpu_check.py`)",
        "",
        "| measure | value | check |",
        "| --- | ---: | --- |",
    ]
    lines += [f"| {a} | {b} | |" for a, b, _ in rows]
    lines += [f"| {a} | {b} | {'✅' if ok else '❌'} |" for a, b, ok in checks]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="data root holding MNIST/raw")
    p.add_argument("--out", default=".", help="where gpu_check.md/json go (default: .)")
    args = p.parse_args()
    import torch  # noqa: PLC0415 - after the flags: --help needs no torch

    if not torch.cuda.is_available():
        sys.exit("error: torch sees no GPU: this check is for a machine with one")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        rows, checks = measure(os.path.abspath(args.data_dir), work)
    md = table(rows, checks, started)
    print(md)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump({"rows": rows, "checks": checks}, f, indent=2)
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
