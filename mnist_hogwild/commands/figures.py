"""The pictures the commands draw: a confusion matrix (evaluate --plot) and the
training curves of a run (plot), as PNG, with matplotlib.

matplotlib is imported here only, when a picture is asked for: training and
the other commands never load it (it would add to every start).
Figures are made with matplotlib.figure.Figure, not pyplot: no global state,
no GUI backend to pick, and savefig draws PNG with Agg.
"""

from mnist_hogwild.core.tables import DATASETS

DPI = 100


def class_names(dataset):
    """(what a class is called, the ten names) for DATASET."""
    entry = DATASETS[dataset]
    return entry.class_word, list(entry.classes)


def _figure(width, height):
    from matplotlib.figure import Figure  # noqa: PLC0415 - only pictures need matplotlib

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def confusion_figure(confusion, dataset, title):
    """The confusion matrix CONFUSION (a 10x10 tensor: rows true, columns
    predicted) with each cell's count, and each true class's accuracy at the
    right. The diagonal is blue by the share of its class it got right; the
    mistakes are red by their count against the largest mistake, so that a
    handful of errors shows (on one scale they would be as white as zero)."""
    what, names = class_names(dataset)
    counts = confusion.tolist()
    n = len(names)
    totals = [max(1, sum(row)) for row in counts]
    colours = cell_colours(counts, totals)
    wordy = max(map(len, names)) > 2  # names, not numbers: a larger figure, slanted labels
    fig = _figure(8.4 if wordy else 6.4, 7.2 if wordy else 6.0)
    ax = fig.add_subplot()
    ax.imshow(colours)
    for t in range(n):
        for p in range(n):
            count = counts[t][p]
            dark = t == p and count / totals[t] > 0.5
            colour = "white" if dark else ("black" if count else "0.7")
            ax.text(p, t, str(count), ha="center", va="center", color=colour, fontsize=9)
        accuracy = 100 * counts[t][t] / totals[t]
        ax.text(n - 0.3, t, f"{accuracy:.1f}%", ha="left", va="center", fontsize=9)
    ax.text(n - 0.3, -0.7, "accuracy", ha="left", va="bottom", fontsize=9, weight="bold")
    ax.set_xticks(
        range(n),
        names,
        rotation=40 if wordy else 0,
        ha="right" if wordy else "center",
    )
    ax.set_yticks(range(n), names)
    ax.set_xlabel(f"predicted {what}", weight="bold")
    ax.set_ylabel(f"true {what}", weight="bold")
    ax.tick_params(length=0)
    ax.set_xlim(-0.5, n + 1.2)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_bounds(-0.5, n - 0.5)
    fig.suptitle(title)
    return fig


def cell_colours(counts, totals):
    """Each cell's colour: the diagonal blue by its class's share, mistakes red
    by their count against the largest mistake, zeros white."""
    from matplotlib import colormaps  # noqa: PLC0415

    n = len(counts)
    worst = max([counts[t][p] for t in range(n) for p in range(n) if t != p] + [1])
    right, wrong = colormaps["Blues"], colormaps["Reds"]

    def colour(t, p):
        if t == p:
            return right(counts[t][p] / totals[t])
        return wrong(0.75 * counts[t][p] / worst) if counts[t][p] else (1.0, 1.0, 1.0, 1.0)

    return [[colour(t, p) for p in range(n)] for t in range(n)]


COLOURS = {"training": "tab:blue", "test": "tab:green", "validation": "tab:purple"}


def curves_figure(rows, intervals, title):
    """A run's curves from its metrics file (STEM.metrics.jsonl): the training
    loss of every logged interval and the learning rate against the samples
    seen, the epochs' test (and validation) loss and accuracy at their ends,
    epoch marks on top. Rows without sample counts (an older file) are drawn
    against the epoch."""
    fig = _figure(9, 4.4)
    loss, accuracy = fig.subplots(1, 2)
    by_samples = all("samples" in r for r in rows)
    x = [r["samples"] if by_samples else r["epoch"] for r in rows]
    loss_panel(loss, rows, x, intervals if by_samples else [])
    accuracy_panel(accuracy, rows, x)
    for ax in (loss, accuracy):
        ax.grid(alpha=0.3)
        epoch_axis(ax, rows, x, by_samples)
    fig.suptitle(title)
    return fig


def loss_panel(ax, rows, x, intervals):
    """The training loss of each interval with the learning rate on its own
    axis (or, without INTERVALS, each epoch's), and the epochs' test and
    validation loss; one legend for both axes, below the plot."""
    if intervals:
        seen = [i["samples"] for i in intervals]
        training = [i["train_loss"] for i in intervals]
        ax.plot(
            seen, training, "-", lw=1, color=COLOURS["training"], label="training (each interval)"
        )
        rate = ax.twinx()
        rate.plot(
            seen,
            [i["lr"] for i in intervals],
            "--",
            color="grey",
            lw=1,
            label="learning rate (right axis)",
        )
        rate.set_ylabel("learning rate (dashed)", color="grey")
        rate.set_ylim(bottom=0)
    else:
        training = [r["train_loss"] for r in rows]
        ax.plot(x, training, "o-", color=COLOURS["training"], label="training")
    for key, label, style in (
        ("test_loss", "test", "o-"),
        ("validation_loss", "validation", "s--"),
    ):
        if all(key in r for r in rows):
            ax.plot(x, [r[key] for r in rows], style, color=COLOURS[label], label=label)
    ax.set_ylabel("loss (negative log-likelihood)")
    lines = rate.get_legend_handles_labels()[0] if intervals else []
    below(ax, ax.get_legend_handles_labels()[0] + lines)


def accuracy_panel(ax, rows, x):
    """The epochs' test and validation accuracy; the chosen epoch labelled."""
    ax.plot(x, [r["accuracy_percent"] for r in rows], "o-", color=COLOURS["test"], label="test")
    decided = "accuracy_percent"
    if all("validation_accuracy_percent" in r for r in rows):
        decided = "validation_accuracy_percent"
        ax.plot(
            x, [r[decided] for r in rows], "s--", color=COLOURS["validation"], label="validation"
        )
    below(ax, ax.get_legend_handles_labels()[0])
    ax.set_ylabel("accuracy (%)")
    best = max(range(len(rows)), key=lambda i: rows[i][decided])
    # The label reaches into the plot from its point, never past an edge.
    left = x[best] >= (min(x) + max(x)) / 2
    ax.annotate(
        f"chosen: test {rows[best]['accuracy_percent']:.2f}%",
        (x[best], rows[best]["accuracy_percent"]),
        textcoords="offset points",
        xytext=(4 if not left else -4, 8),
        ha="right" if left else "left",
    )
    ax.margins(y=0.15)  # room above the chosen point for its label
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 100.0))  # (a percentage: never past 100)


def below(ax, handles):
    """AX's legend of HANDLES under the plot, where it covers no line."""
    if handles:
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncol=2,
            fontsize="small",
            frameon=False,
        )


def epoch_axis(ax, rows, x, by_samples):
    """The x axis: samples seen (with each epoch's end marked and numbered on
    top), or whole epochs for a file without sample counts."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: PLC0415

    if not by_samples:
        ax.set_xlabel("epoch")
        ax.set_xlim(min(x) - 0.5, max(x) + 0.5)
        # Whole epochs only: the locator alone falls back to fractions when
        # fewer than two whole numbers lie in the range (a one-epoch run).
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        return
    ax.set_xlabel("training samples seen")
    ax.set_xlim(0, max(x) * 1.06)  # (room for the last epoch's markers)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v else "0"))
    for end in x:
        ax.axvline(end, color="black", alpha=0.15, lw=1)
    top = ax.secondary_xaxis("top")
    every = max(1, -(-len(rows) // 10))  # at most about ten numbers
    shown = [i for i in range(len(rows)) if (i + 1) % every == 0 or i == len(rows) - 1]
    top.set_xticks([x[i] for i in shown], [str(rows[i]["epoch"]) for i in shown])
    top.set_xlabel("end of epoch", fontsize=9)


def save_png(fig, f):
    """Write FIG to the open binary file F as PNG."""
    fig.savefig(f, format="png")
