"""Plot loss and accuracy per epoch from the trainer's metrics file.

    python scripts/plot.py model_checkpoint.metrics.jsonl -o curves.png

matplotlib is a development dependency (requirements-dev.txt); the image does
not include it.
"""

import argparse
import json
import sys


def read_metrics(path):
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: cannot read metrics from {path}: {e}")
    if not rows:
        sys.exit(f"error: {path} has no epochs yet")
    return rows


def plot(rows, out, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    left.plot(epochs, [r["test_loss"] for r in rows], "o-", label="test")
    left.set_xlabel("epoch")
    left.set_ylabel("loss (NLL)")
    left.legend()
    right.plot(epochs, [r["accuracy_percent"] for r in rows], "o-", color="tab:green")
    right.set_xlabel("epoch")
    right.set_ylabel("test accuracy (%)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot loss and accuracy per epoch.")
    p.add_argument("metrics", help="metrics file written by the trainer (STEM.metrics.jsonl)")
    p.add_argument(
        "-o", "--output", default="curves.png", help="PNG to write (default: curves.png)"
    )
    p.add_argument("--title", default="mnist-hogwild training", help="figure title")
    args = p.parse_args(argv)
    plot(read_metrics(args.metrics), args.output, args.title)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
