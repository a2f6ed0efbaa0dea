"""The `evaluate` command: a checkpoint's accuracy on the test split, one line
out, JSON with per-class accuracy and the confusion matrix (and a picture)."""

import json

from mnist_hogwild.commands import flags
from mnist_hogwild.commands.output import check_output, write_output
from mnist_hogwild.core import config
from mnist_hogwild.core.config import RunOptions
from mnist_hogwild.core.errors import UsageError
from mnist_hogwild.core.loglines import say
from mnist_hogwild.learn import data
from mnist_hogwild.learn.evaluation import evaluate
from mnist_hogwild.run import checkpoint


def add_arguments(p):
    flags.data_dir_flag(p)
    flags.dataset_flag(
        p,
        "the test set to use; must be the one the model was trained on (default: the "
        "checkpoint's)",
    )
    default = RunOptions.test_batch_size
    p.add_argument(
        "--batch-size", type=int, default=default, metavar="N", help=f"(default: {default})"
    )
    p.add_argument(
        "--out",
        default="eval_results.json",
        metavar="FILE",
        help="where the metrics go, as JSON (default: eval_results.json)",
    )
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw the confusion matrix as a PNG (default: no picture)",
    )


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
    result = evaluate(model, test, dataset, max(1, args.batch_size))
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
        picture = confusion_picture(result.confusion)
        write_output(args.plot, lambda f: picture.save(f, "PNG"), args.checkpoint)
    say(
        f"{args.checkpoint} (epoch {state['epoch']}): test loss {result.test_loss:.4f}, "
        f"accuracy {100 * result.accuracy:.2f}% on {len(test)} {dataset} test images; "
        f"wrote {args.out}" + (f" and {args.plot}" if args.plot else "")
    )
    return 0


def confusion_picture(confusion, cell=40):
    """The confusion matrix as a picture (Pillow: no plotting library needed):
    rows are the true classes, columns the predicted ones, darker = more."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - only the commands need Pillow

    n = confusion.shape[0]
    margin = cell
    image = Image.new("RGB", (margin + n * cell, margin + n * cell), "white")
    draw = ImageDraw.Draw(image)
    rows = confusion.sum(dim=1).clamp(min=1)
    for t in range(n):
        draw.text((margin // 3, margin + t * cell + cell // 3), str(t), fill="black")
        draw.text((margin + t * cell + cell // 3, margin // 3), str(t), fill="black")
        for p in range(n):
            share = float(confusion[t, p]) / float(rows[t])
            shade = int(255 * (1 - share))
            box = [margin + p * cell, margin + t * cell, margin + (p + 1) * cell - 1]
            box.append(margin + (t + 1) * cell - 1)
            draw.rectangle(box, fill=(shade, shade, 255) if t == p else (255, shade, shade))
            text = str(int(confusion[t, p]))
            draw.text(
                (box[0] + 3, box[1] + cell // 3), text, fill="black" if share < 0.6 else "white"
            )
    return image
