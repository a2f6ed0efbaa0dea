#!/usr/bin/env python3
"""Time to accuracy: epochs and seconds to 98% and 99% test accuracy for each
recipe at each process count, --repeats seeds each, every run a real trainer
in a subprocess; prints (and saves) a table and a plot.

    python scripts/time_to_accuracy.py                             # sample, fast, fast:3 at 1,2,4
    python scripts/time_to_accuracy.py --recipes fast --processes 1,2,4,8,16,32
    python scripts/time_to_accuracy.py --smoke                     # seconds, synthetic data
    python scripts/time_to_accuracy.py --update-docs               # rewrite docs' and README's tables

Writes docs/time_to_accuracy.json, .md and .png (and processes.json/.png for
a process sweep). Time only on an idle machine.
"""

import argparse
import json
import os
import shlex
import statistics
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
import benchlib
import harness
from benchlib import new_figure
from harness import REPO, TrainerProcess, flags

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


def flops(result):
    return f"{result['flops_per_sample'] / 1e6:.2f}M" if "flops_per_sample" in result else "?"


def peak(result):
    return f"{result['peak_gflops']:.0f} GFLOP/s" if "peak_gflops" in result else "?"


def _of_peak(result):
    """The "of peak" cell: the row's median samples/s as a share of RESULT's peak."""
    if "peak_gflops" not in result:
        return lambda row: "-"

    def cell(row):
        rates = [v for v in row.get("samples_per_s", []) if v is not None]
        if not rates:
            return "-"
        share = statistics.median(rates) * result["flops_per_sample"] / result["peak_gflops"] / 1e9
        return f"{100 * share:.0f}%"

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
        f"{result['device']}, commit {result.get('commit', 'not recorded')}; each cell: median (min-max) over the seeds, seconds from the "
        f"command to the epoch line; runs stop at 99% or their last epoch; staleness: the "
        f"others' batches that landed while a batch was computed, the epoch's mean; faster: the "
        f"sample recipe's median seconds to 98% over this row's, at the same process count, in "
        f"the same run; of peak: samples/s x {flops(result)} FLOP a sample (forward and backward, "
        f"torch's FlopCounterMode) over {peak(result)}, the machine's fp32 peak (a 2048x2048 "
        f"matmul on every usable CPU, in the same run) (`python scripts/time_to_accuracy.py`)."
    )
    columns = (*TTA_COLUMNS[:5], ("of peak", _of_peak(result)), *TTA_COLUMNS[5:])
    return "\n".join([intro, "", *table(result["time_to_accuracy"], columns)]) + "\n"


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


def is_sweep(result):
    """A process sweep (more than three counts): docs' "Every process count"."""
    return len({r["processes"] for r in result["time_to_accuracy"]}) > 3


def publish_time_to_accuracy(result, args):
    md, name = tta_markdown(result), "processes" if is_sweep(result) else "time_to_accuracy"
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(md)
    try:
        plot_time_to_accuracy(result, os.path.join(args.out, "time_to_accuracy.png"))
        if is_sweep(result):
            plot_processes(result, os.path.join(args.out, "processes.png"))
    except ImportError:
        print("note: no matplotlib here: the table and JSON are written, the plot is not")
    print(md)
    if args.update_docs and is_sweep(result):
        harness.update_doc("docs/performance.md", "processes", "\n" + md)
    elif args.update_docs:
        harness.update_doc("docs/performance.md", "time-to-accuracy", "\n" + md)
        harness.update_doc("README.md", "recipes", "\n" + recipes_summary(result))


def recipes_summary(result):
    """README's table: each recipe at 2 processes (or the most common count)."""
    rows = [r for r in result["time_to_accuracy"] if r["processes"] == 2]
    columns = [c for c in TTA_COLUMNS if c[0] in README_COLUMNS]
    return "\n".join(table(rows or result["time_to_accuracy"], columns)) + "\n"


FLAGS = (
    ("--repeats", dict(type=int, default=3, help="seeds per row (default: %(default)s)")),
    ("--smoke", dict(action="store_true", help="tiny synthetic data, 1 seed")),
    ("--out", dict(default=os.path.join(REPO, "docs"), help="output folder (default: docs/)")),
    ("--data-dir", dict(metavar="DIR", help="MNIST data root (default: found as documented)")),
    ("--update-docs", dict(action="store_true", help="rewrite the tables in docs and README")),
    (
        "--recipes",
        dict(
            nargs="+",
            default=["sample,fast,fast:3"],
            help="recipes to run: NAME, NAME:N for --epochs N, and train flags after it, as "
            "one word each ('fast --dropout 0.5'); or NAME,NAME:N,... (default: %(default)s)",
        ),
    ),
    ("--processes", dict(default="1,2,4", help="(default: %(default)s)")),
    ("--device", dict(default="cpu", choices=("cpu", "cuda"), help="(default: %(default)s)")),
    ("--from-json", dict(metavar="FILE", help="measure nothing: redraw from a saved JSON")),
)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, options in FLAGS:
        p.add_argument(name, **options)
    args = p.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            publish_time_to_accuracy(json.load(f), args)
        return
    with benchlib.bench_run(args.data_dir, args.smoke) as (work, data_dir, dataset, result):
        result.update(measure_time_to_accuracy(args, data_dir, dataset, work))
        benchlib.save_json(
            result, args.out, "processes" if is_sweep(result) else "time_to_accuracy"
        )
        publish_time_to_accuracy(result, args)


if __name__ == "__main__":
    main()
