"""The curves' picture (plot, docs/curves.png): the legends sit below the
plots, covering no line, and the chosen epoch's label stays inside its plot,
for a one-epoch run (its point at the right edge) as for a longer one."""

import pytest

from mnist_hogwild.commands import figures


def run(epochs, per_epoch=55000):
    rows = [
        {
            "epoch": e,
            "samples": e * per_epoch,
            "train_loss": 0.3 / e,
            "test_loss": 0.2 / e,
            "validation_loss": 0.21 / e,
            "accuracy_percent": 93 + e * 0.5,
            "validation_accuracy_percent": 93.2 + e * 0.5,
        }
        for e in range(1, epochs + 1)
    ]
    intervals = [
        {"samples": s, "train_loss": 2.3 / (1 + s / 5000), "lr": 0.01}
        for s in range(1000, epochs * per_epoch, 1000)
    ]
    return rows, intervals


def inside(inner, outer):
    return (
        inner.x0 >= outer.x0 - 0.5
        and inner.x1 <= outer.x1 + 0.5
        and inner.y0 >= outer.y0 - 0.5
        and inner.y1 <= outer.y1 + 0.5
    )


@pytest.mark.parametrize("epochs", [1, 10])
def test_legends_below_the_plots_and_the_chosen_label_inside(epochs):
    rows, intervals = run(epochs)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    fig = figures.curves_figure(rows, intervals, "training")
    canvas = FigureCanvasAgg(fig)  # (as savefig draws a PNG)
    canvas.draw()
    renderer = canvas.get_renderer()
    loss, accuracy = fig.axes[:2]
    for ax in (loss, accuracy):
        legend = ax.get_legend()
        assert legend is not None
        assert legend.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0
    labels = [t.get_text() for t in loss.get_legend().get_texts()]
    assert "learning rate (right axis)" in labels
    (chosen,) = [t for t in accuracy.texts if t.get_text().startswith("chosen: test")]
    assert inside(chosen.get_window_extent(renderer), accuracy.get_window_extent(renderer))
