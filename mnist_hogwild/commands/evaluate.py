"""The `evaluate` command: a checkpoint's accuracy on the test split, one line
out, JSON with per-class accuracy and the confusion matrix (and a picture)."""

import json
import os

from mnist_hogwild.commands import figures
from mnist_hogwild.commands.output import check_output, write_output
from mnist_hogwild.core import config
from mnist_hogwild.core.errors import UsageError
from mnist_hogwild.core.loglines import say
from mnist_hogwild.learn import data
from mnist_hogwild.learn.evaluation import evaluate
from mnist_hogwild.training import checkpoint


def run_command(args):
    """Evaluate a checkpoint on the test split; one line out, JSON (and a
    picture) written. Returns the exit code."""
    for path in filter(None, (args.out, args.plot)):
        check_output(path, args.checkpoint)
    model, state = checkpoint.load_model(args.checkpoint)
    dataset = state["config"].get("dataset", config.MNIST)
    if args.dataset is not None and args.dataset != dataset:
        raise UsageError(
            f"{args.checkpoint} was trained on {dataset}, not {args.dataset}: "
            f"its accuracy there would mean nothing"
        )
    files = data.prepare(args.data_dir, dataset, log=lambda message: None)
    test = data.load_split(files["test"])
    result = evaluate(model, test, dataset, args.test_batch_size)
    report = {
        "Test loss": round(result.test_loss, 6),
        "Accuracy": round(100 * result.accuracy, 4),
        "per_class_accuracy": {str(c): round(100 * a, 4) for c, a in enumerate(result.per_class())},
        "confusion_matrix": result.confusion.tolist(),
        "dataset": dataset,
        "test_images": len(test),
        "checkpoint": args.checkpoint,
        "epoch": state["epoch"],
    }
    payload = (json.dumps(report, indent=2) + "\n").encode()
    write_output(args.out, lambda f: f.write(payload), args.checkpoint)
    if args.plot:
        title = (
            f"{os.path.basename(args.checkpoint)} (epoch {state['epoch']}): "
            f"{100 * result.accuracy:.2f}% of {len(test)} {dataset} test images"
        )
        picture = figures.confusion_figure(result.confusion, dataset, title)
        write_output(args.plot, lambda f: figures.save_png(picture, f), args.checkpoint)
    say(
        f"{args.checkpoint} (epoch {state['epoch']}): test loss {result.test_loss:.4f}, "
        f"accuracy {100 * result.accuracy:.2f}% on {len(test)} {dataset} test images; "
        f"wrote {args.out}" + (f" and {args.plot}" if args.plot else "")
    )
    return 0
