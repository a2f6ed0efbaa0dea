#!/usr/bin/env python3
"""The GPU checks, one step per call, for scripts/device_check.sh.

    python tools/gpu_check.py STEP --data-dir DIR --out DIR [--device cuda|cpu]

DIR holds MNIST/raw. Each step appends its results to OUT/results.jsonl the
moment each is known and rewrites OUT/results.md from everything there, so
a step that is killed (timeout, crash) leaves every earlier result. It
installs nothing and uses the torch that is there. --device cpu rehearses
every step on the CPU (where no GPU is lent), with what needs a GPU skipped.

Steps:
  throughput   samples/s and first batch at 1, 2, 4 and 8 processes (2 epochs)
  accuracy     2 epochs at 2 processes, 3 runs on the device and 3 on the CPU:
               the device's mean must lie within the CPU runs' own spread
               (3 standard deviations of the larger sample, at least 0.2 points)
  resume       SIGINT mid-epoch, then --resume: the batches of both runs add
               up to every batch of every epoch, exactly once
  bitwise      1 process, --deterministic, Adam with one-cycle: a stopped and
               resumed run equals an uninterrupted one, weights and optimizer
               state, bitwise
  cpu-eval     the device checkpoint, evaluated on the CPU, gives its accuracy
  oom          another process holds nearly all GPU memory: the trainer exits 1
               with one error line naming CUDA out of memory
  expandable   PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: training works
  time-to-accuracy
               scripts/time_to_accuracy.py, fast and fast:3 at 1 and
               16 processes: seconds from the command to 98% and 99%
  cores-16     --recipe fast at 16 processes on the machine's 16 CPU cores
               (--device cpu): accuracy after its epoch (>= 98%), staleness, seconds
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# harness and procs, shared with the scripts, live in tools/.
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
import harness
from harness import TrainerProcess, flags

from mnist_hogwild.training import checkpoint
from mnist_hogwild.learn import data
from mnist_hogwild.learn.evaluation import evaluate

STEPS = (
    "throughput",
    "accuracy",
    "resume",
    "bitwise",
    "cpu-eval",
    "oom",
    "expandable",
    "time-to-accuracy",
    "cores-16",
)


class Results:
    """OUT/results.jsonl, appended one record at a time; results.md rewritten each time."""

    def __init__(self, out, step):
        self.out, self.step = out, step
        os.makedirs(out, exist_ok=True)

    def add(self, what, value, ok=None):
        record = {"step": self.step, "what": what, "value": value, "ok": ok, "at": time.time()}
        with open(os.path.join(self.out, "results.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        mark = "" if ok is None else ("✅" if ok else "❌")
        print(f"{self.step}: {what}: {value} {mark}", flush=True)
        write_markdown(self.out)
        return ok


def write_markdown(out):
    with open(os.path.join(out, "results.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    lines = ["| step | measure | value | check |", "| --- | --- | ---: | --- |"]
    for r in records:
        mark = "" if r["ok"] is None else ("✅" if r["ok"] else "❌")
        lines.append(f"| {r['step']} | {r['what']} | {r['value']} | {mark} |")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def metrics_of(ckpt):
    with open(harness.beside.metrics(ckpt)) as f:
        return [json.loads(line) for line in f]


def run(args, work, name, epochs, env=None, **options):
    """A whole run; returns (metrics rows, ready line fields, checkpoint path)."""
    ckpt = os.path.join(work, f"{name}.pth")
    harness.remove_run_files(ckpt)
    options.setdefault("device", args.device)
    t = TrainerProcess(
        flags(data_dir=args.data_dir, epochs=epochs, checkpoint=ckpt, **options), work, env
    )
    ready = t.wait_for("ready", timeout=240)[2]
    t.wait_for("done", timeout=600)
    t.finish(ok=(0,))
    return metrics_of(ckpt), ready, ckpt


def step_throughput(args, work, results):
    for n in (1, 2, 4, 8):
        rows, ready, _ = run(args, work, f"tp{n}", 2, num_processes=n, log_interval=100)
        rate = statistics.median(r["samples_per_s"] for r in rows)
        results.add(f"{args.device}, {n} processes: samples/s", round(rate))
        results.add(f"{args.device}, {n} processes: first batch after start (s)", ready["seconds"])


def step_accuracy(args, work, results):
    scores = {}
    for device in (args.device, "cpu") if args.device != "cpu" else ("cpu",):
        scores[device] = []
        for i in range(3):
            rows, _, _ = run(args, work, f"acc-{device}-{i}", 2, device=device, num_processes=2)
            scores[device].append(rows[-1]["accuracy_percent"])
            results.add(f"{device} run {i + 1}: accuracy after 2 epochs (%)", scores[device][-1])
    spread = max(statistics.stdev(s) for s in scores.values())
    tolerance = max(3 * spread, 0.2)
    results.add("run-to-run spread, larger stdev (points)", round(spread, 3))
    if args.device != "cpu":
        gap = abs(statistics.mean(scores[args.device]) - statistics.mean(scores["cpu"]))
        results.add(
            f"{args.device} vs cpu mean accuracy gap (points), tolerance {tolerance:.2f}",
            round(gap, 3),
            gap <= tolerance,
        )


def stop_and_resume(args, work, name, epochs, **options):
    """SIGINT in the first epoch, then --resume: (stopped fields, resumed output, ckpt)."""
    ckpt = os.path.join(work, f"{name}.pth")
    harness.remove_run_files(ckpt)
    options.setdefault("device", args.device)
    argv = flags(data_dir=args.data_dir, epochs=epochs, checkpoint=ckpt, **options)
    t = TrainerProcess(argv, work)
    t.wait_for("progress", timeout=240)
    t.proc.send_signal(signal.SIGINT)
    first = t.finish(ok=(130,))
    t = TrainerProcess([*argv, "--resume"], work)
    second = t.finish(ok=(0,))
    return harness.parse_lines("stopped", first), first, second, ckpt


def step_resume(args, work, results):
    stopped, first, second, ckpt = stop_and_resume(args, work, "resume", 2, log_interval=20)
    state = checkpoint.load(ckpt, checkpoint.Net().state_dict())
    per_epoch = state["batches_per_epoch"]
    batches = [
        sum(p["batches"] for p in harness.parse_lines(kind, out))
        for kind, out in (("stopped", first), ("done", second))
    ]
    results.add("stopped at (epoch, batch)", (stopped[0]["epoch"], stopped[0]["step"]))
    results.add(
        "batches before + after the stop == 2 epochs",
        f"{batches[0]} + {batches[1]} vs {2 * per_epoch}",
        sum(batches) == 2 * per_epoch and (state["epoch"], state["step"]) == (2, 0),
    )


def step_bitwise(args, work, results):
    one = dict(num_processes=1, deterministic=True, log_interval=20, recipe="fast")
    _, _, straight = run(args, work, "straight", 1, **one)
    _, _, _, resumed = stop_and_resume(args, work, "resumed", 1, **one)
    a = checkpoint.load(straight, checkpoint.Net().state_dict())
    b = checkpoint.load(resumed, checkpoint.Net().state_dict())
    weights = all(a["model_state"][k].equal(b["model_state"][k]) for k in a["model_state"])
    results.add(
        "1 process, --deterministic: weights bitwise equal after stop+resume", weights, weights
    )
    sa, sb = a["optimizer_state"]["state"], b["optimizer_state"]["state"]
    state = sa.keys() == sb.keys() and all(
        sa[i].keys() == sb[i].keys() and all(sa[i][k].equal(sb[i][k]) for k in sa[i]) for i in sa
    )
    results.add("... and the optimizer state (Adam moments, steps)", state, state)


def step_cpu_eval(args, work, results):
    rows, _, ckpt = run(args, work, "evaluated", 1, num_processes=2)
    model, _ = checkpoint.load_model(ckpt)
    test = data.map_split(data.prepare(args.data_dir, "mnist", log=lambda m: None)["test"])
    accuracy = 100 * evaluate(model, test, "mnist", 500).accuracy
    logged = rows[-1]["accuracy_percent"]
    results.add(
        f"{args.device} checkpoint evaluated on the CPU vs logged (%)",
        f"{accuracy:.2f} vs {logged:.2f}",
        abs(accuracy - logged) < 0.2,
    )


HOG = """
import sys, time, torch
free, total = torch.cuda.mem_get_info()
hog = torch.empty(max(0, free - (256 << 20)), dtype=torch.uint8, device="cuda")
print("holding", hog.numel() >> 20, "MiB of", total >> 20, flush=True)
time.sleep(600)
"""


def step_oom(args, work, results):
    if args.device == "cpu":
        results.add("out of memory message", "skipped: needs a GPU")
        return
    hog = subprocess.Popen([sys.executable, "-c", HOG], stdout=subprocess.PIPE, text=True)
    try:
        results.add("another process", hog.stdout.readline().strip())
        proc = subprocess.run(
            [sys.executable, harness.MAIN, *flags(data_dir=args.data_dir, epochs=1, device="cuda")],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        hog.kill()
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    one = (
        proc.returncode == 1
        and len(errors) == 1
        and "CUDA out of memory" in errors[0]
        and "Traceback" not in proc.stderr
    )
    results.add(
        "trainer exit code and stderr", f"{proc.returncode}: {' | '.join(errors)[:300]}", one
    )


def step_expandable(args, work, results):
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    rows, ready, _ = run(args, work, "expandable", 1, env=env, num_processes=2)
    results.add(
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: 1 epoch, 2 processes (%)",
        rows[-1]["accuracy_percent"],
        rows[-1]["accuracy_percent"] > 90,
    )


def step_cores_16(args, work, results):
    """Hogwild on 16 real cores: the staleness there, and the adapted recipe's accuracy."""
    started = time.monotonic()
    (row,), _, _ = run(args, work, "cores16", 1, recipe="fast", num_processes=16, device="cpu")
    seconds = round(time.monotonic() - started, 1)
    results.add(
        "--recipe fast, 16 processes, CPU: accuracy after 1 epoch (%)",
        round(row["accuracy_percent"], 2),
        row["accuracy_percent"] >= 98,
    )
    results.add(
        "the same: staleness (mean, p99)", [round(row["staleness"], 1), row["staleness_p99"]]
    )
    results.add(
        "the same: seconds from the command to the end, samples/s",
        [seconds, round(row["samples_per_s"])],
    )


def step_time_to_accuracy(args, work, results):
    bench = os.path.join(harness.REPO, "scripts", "time_to_accuracy.py")
    subprocess.run(
        [
            sys.executable,
            bench,
            "--recipes",
            "fast,fast:3",
            "--processes",
            "1,16",
            "--device",
            args.device,
            "--repeats",
            "1",
            "--data-dir",
            args.data_dir,
            "--out",
            args.out,
        ],
        check=True,
    )
    with open(os.path.join(args.out, "time_to_accuracy.json")) as f:
        rows = json.load(f)["time_to_accuracy"]
    for r in rows:
        a, b = r["to_98"]["seconds"], r["to_99"]["seconds"]
        what = f"{r['recipe']} x{r['processes']}: seconds from the command to 98% and 99%"
        results.add(what, f"98% at {a} s, 99% at {b} s, best {r['best']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=STEPS)
    p.add_argument("--data-dir", required=True, help="data root holding MNIST/raw")
    p.add_argument("--out", required=True, help="where results.jsonl/md go")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="(default: cuda)")
    args = p.parse_args()
    args.data_dir = os.path.abspath(args.data_dir)
    results = Results(args.out, args.step)
    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{args.step}-") as work:
        step = globals()["step_" + args.step.replace("-", "_")]
        step(args, work, results)
    with open(os.path.join(args.out, "results.jsonl")) as f:
        mine = [json.loads(line) for line in f if json.loads(line)["step"] == args.step]
    return 1 if any(r["ok"] is False for r in mine) else 0


if __name__ == "__main__":
    sys.exit(main())
