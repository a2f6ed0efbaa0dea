"""The `plot` command: a run's training curves (the loss of every logged
interval, the epochs' test and validation accuracy) as a PNG, from the
metrics file beside its checkpoint."""

import os
import sys

from mnist_hogwild.training import beside
from mnist_hogwild.commands import figures
from mnist_hogwild.commands.output import check_output, write_output
from mnist_hogwild.core.errors import InputError
from mnist_hogwild.core.loglines import say
from mnist_hogwild.training import checkpoint


def run_command(args):
    """Draw the curves of the run on args.checkpoint; one line out."""
    check_output(args.out, args.checkpoint)
    metrics = beside.metrics(args.checkpoint)
    rows = checkpoint.read_metrics(args.checkpoint, warn=lambda w: say(f"warning: {w}", sys.stderr))
    if not rows:
        why = "has no epochs yet" if os.path.exists(metrics) else "does not exist"
        raise InputError(f"{metrics} {why}: train at least one epoch on {args.checkpoint}")
    epochs = f"{len(rows)} epoch" + ("s" if len(rows) > 1 else "")
    title = f"training of {os.path.basename(args.checkpoint)}: {epochs}"
    picture = figures.curves_figure(rows, checkpoint.read_intervals(args.checkpoint), title)
    write_output(args.out, lambda f: figures.save_png(picture, f), args.checkpoint)
    best = max(rows, key=checkpoint.decided_by)
    say(
        f"{metrics}: {epochs}, chosen epoch {best['epoch']}: test accuracy "
        f"{best['accuracy_percent']:.2f}%; wrote {args.out}"
    )
    return 0
