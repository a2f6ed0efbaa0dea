"""The benchmark's report (scripts/benchmark.py): its tables, plots, and the
sections of docs/performance.md and README.md it rewrites."""

import os

import harness
from benchlib import new_figure


def markdown(result):
    lines = [
        f"Measured {result['date']} on {result['machine']}, data: {result['data']}, "
        f"batch 64, the sample's Net; medians of {result['repeats']} runs "
        f"(`python scripts/benchmark.py`).",
        "",
        "| processes x threads | samples/s | epoch (s) | scaling vs 1x1 | memory PSS (MB) | /dev/shm (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = result["throughput"][0]["samples_per_s"]
    for row in result["throughput"]:
        n = row["processes"]
        lines.append(
            f"| {n} x {row['threads']} | {row['samples_per_s']:.0f} | {row['epoch_seconds']:.1f} | "
            f"{row['samples_per_s'] / base:.2f}x ({100 * row['samples_per_s'] / base / n:.0f}% per process) | "
            f"{row['pss_mb']:.0f} | {row['shm_mb']:.1f} |"
        )
    c = result["contention"]
    if c:
        lines += [
            "",
            "With another process keeping one core busy: "
            + ", ".join(f"{k}: {v:.0f} samples/s" for k, v in c.items())
            + ".",
        ]
    single = [r for r in result["throughput"] if r["threads"] == 1]
    if len(single) > 1:
        a, b = single[0], single[-1]
        extra = (b["pss_mb"] - a["pss_mb"]) / (b["processes"] - a["processes"])
        lines += [
            "",
            f"Each extra process adds about {extra:.0f} MB PSS ({a['processes']} -> "
            f"{b['processes']} processes): workers forked from the trainer share torch's "
            f"memory with it until they write to it, and the data set is memory-mapped and "
            f"counted once.",
        ]
    return "\n".join(lines + timing_rows(result)) + "\n"


def facts(result):
    """(what, value) of each fixed cost the benchmark measured, in docs' words."""
    s, acc, d = result["stop"], result["accuracy"], result["docker"]
    hit = acc["reached"]
    rows = [
        ("start of run to first training batch", f"{result['first_batch_s']:.1f} s"),
        ("SIGINT to exit (checkpoint saved)", f"{s['sigint_to_exit_s']:.2f} s"),
        ("checkpoint save", f"{s['save_ms']:.0f} ms, {s['checkpoint_bytes'] / 1024:.0f} KiB"),
        (
            f"time to {acc['target']:.0f}% test accuracy (defaults, process start to that epoch's "
            "line)",
            f"epoch {hit['epoch']}, {hit['wall_s']:.0f} s wall" if hit else "not reached",
        ),
    ]
    if d:
        one = d.get("one_core_first_batch_s")
        rows += [
            (f"image size ({d['image']})", f"{d['image_mb']:.0f} MB"),
            ("container start to first batch", f"{d['container_first_batch_s']:.1f} s"),
            ("the same, one core (`--cpus 1`, 1 process)", f"{one:.1f} s" if one else "-"),
            ("docker stop", f"{d['docker_stop_s']:.2f} s"),
            (
                f"autograder flow (`train.py`, then `train.py --resume`, {d['autograder_epochs']} "
                f"epochs)",
                f"{d['autograder_s']:.0f} s, test accuracy {d['autograder_accuracy']:.2f}%",
            ),
        ]
    return rows


def timing_rows(result):
    """The benchmark's second table: start, stop, save, accuracy and Docker rows."""
    return ["", "| what | value |", "| --- | ---: |"] + [f"| {a} | {b} |" for a, b in facts(result)]


def plot_scaling(result, path):
    rows = [r for r in result["throughput"] if r["threads"] == 1]
    xs = [r["processes"] for r in rows]
    fig, ax = new_figure(5, 3.5)
    ax.plot(xs, [r["samples_per_s"] for r in rows], "o-", label="measured")
    ax.plot(
        xs,
        [rows[0]["samples_per_s"] * min(x, result["usable_cpus"]) for x in xs],
        "--",
        label=f"linear up to {result['usable_cpus']} CPUs",
    )
    ax.set_xlabel("--num-processes (1 thread each)")
    ax.set_ylabel("training samples/s")
    ax.set_title(f"Hogwild scaling, {result['data']}")
    ax.set_xticks(xs)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def breakdown_markdown(rows, result):
    """Where a whole run's wall time goes, one row per process count."""
    lines = [
        f"Whole runs on {result['machine']}, {result['data']}, {rows[0]['epochs']} epochs "
        f"(`python scripts/benchmark.py{' --breakdown ' + ','.join(str(r['processes']) for r in rows) if len(rows) > 1 else ''}`):",
        "",
        "| processes | wall (s) | start-up to first batch | training | evaluation | epoch boundaries | exit | samples/s | final accuracy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        parts = ("startup_s", "training_s", "evaluation_s", "boundaries_s", "exit_s")
        shares = [f"{r[k]:.1f} s ({100 * r[k] / r['wall_s']:.0f}%)" for k in parts]
        lines.append(
            f"| {r['processes']} | {r['wall_s']:.1f} | {' | '.join(shares)} | "
            f"{r['samples_per_s']:.0f} | {r['accuracy_per_epoch'][-1]:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def plot_breakdown(rows, path):
    """A stacked bar per process count: start-up, training, evaluation, the rest."""
    parts = [("startup_s", "start-up"), ("training_s", "training"), ("evaluation_s", "evaluation")]
    parts += [("boundaries_s", "epoch boundaries"), ("exit_s", "exit")]
    labels = [str(r["processes"]) for r in rows]
    fig, ax = new_figure(7, 0.6 * len(rows) + 2.2)
    left = [0.0] * len(rows)
    for key, name in parts:
        values = [max(r[key], 0.0) for r in rows]
        ax.barh(labels, values, left=left, label=name)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlabel("seconds")
    ax.set_ylabel("--num-processes")
    ax.set_title(f"Where a {rows[0]['epochs']}-epoch run's time goes")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=5)
    fig.savefig(path, dpi=100)


def readme_summary(result):
    """README's few lines: what the default run costs and reaches, and the
    fixed costs a user notices."""
    acc, d = result["accuracy"], result["docker"] or {}
    wall = acc["wall_s"]
    lines = [
        f"The first command downloads MNIST into `./data/MNIST/raw` (or uses the files there) "
        f"and trains the default {acc['epochs']} epochs on 2 processes: {wall:.0f} s on "
        f"{result['machine']} (the host), to {acc['accuracy_per_epoch'][-1]:.2f}% test "
        f"accuracy ({result['data']}); measured by `python scripts/benchmark.py`, which "
        f"writes [docs/performance.md](docs/performance.md).",
    ]
    if d:
        lines[0] += (
            f" In the image the course autograder's two runs (`train.py`, then `train.py "
            f"--resume`) took {d['autograder_s']:.0f} s and reached "
            f"{d['autograder_accuracy']:.2f}%."
        )
    return "\n".join(lines)


# The facts README shows (the rest are in docs/performance.md): the start of
# their name in performance.md's table, and their name in README's.
README_FACTS = {
    "start of run": "start to first batch",
    "SIGINT": "Ctrl-C to exit, checkpoint saved",
    "the same, one core": "container start to first batch, `--cpus 1`",
    "docker stop": "`docker stop`",
    "image size": "image",
}


def perf_summary(result):
    """README's paragraph: training samples/s and the fixed costs a user notices
    (the tables are docs/performance.md's)."""
    two = next(r for r in result["throughput"] if (r["processes"], r["threads"]) == (2, 1))
    rows = [("training, 1 process", f"{result['throughput'][0]['samples_per_s']:.0f} samples/s")]
    rows += [("2 processes", f"{two['samples_per_s']:.0f}")]
    found = dict(facts(result))
    for start, label in README_FACTS.items():
        rows += [(label, b) for a, b in found.items() if a.startswith(start)]
    said = "; ".join(f"{a}: {b}" for a, b in rows)
    return (
        f"On {result['machine']}, {result['data']}: {said} (`python scripts/benchmark.py`; "
        f"tables and plots in [docs/performance.md](docs/performance.md)).\n"
    )


def publish(result, args):
    """Write benchmark.md and the plots (and the docs' sections) from RESULT."""
    os.makedirs(args.out, exist_ok=True)
    md = markdown(result) if "throughput" in result else ""
    md += "\n" + breakdown_markdown(result["breakdown"], result)
    name = "benchmark" if "throughput" in result else "breakdown"
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(md)
    if "throughput" in result:
        plot_scaling(result, os.path.join(args.out, "scaling.png"))
    try:
        plot_breakdown(result["breakdown"], os.path.join(args.out, f"{name}.png"))
    except ImportError:
        print("note: no matplotlib here: the table and JSON are written, the plot is not")
    print(md)
    if args.update_docs and "throughput" in result:
        harness.update_doc("docs/performance.md", "benchmark", "\n" + md)
        harness.update_doc("README.md", "quickstart", "\n" + readme_summary(result) + "\n")
        harness.update_doc("README.md", "perf", "\n" + perf_summary(result))
