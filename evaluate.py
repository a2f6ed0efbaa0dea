"""Test-set evaluation: the trainer's after every epoch, and the `evaluate`
command's on any checkpoint (with per-class accuracy and the confusion matrix).
"""

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import checkpoint
import config
import data
from errors import InputError, UsageError
from loglines import say

# Evaluation's memory grows with its batch (conv1's activations alone are
# 23 KB per image); batches are cut to this size whatever --test-batch-size
# asks, so a large value costs no memory, only the speed it no longer gains.
MAX_EVAL_BATCH = 1000


@dataclass
class Evaluation:
    test_loss: float
    accuracy: float  # a fraction in [0, 1]; the log lines print it as a percent
    confusion: torch.Tensor  # [true class, predicted class] counts, int64 on the CPU

    @classmethod
    def from_sums(cls, loss_sum, confusion):
        """From the summed loss and the confusion counts (of one shard or many)."""
        n = max(1, int(confusion.sum()))
        return cls(loss_sum / n, confusion.diagonal().sum().item() / n, confusion)

    def loss_sum(self):
        return self.test_loss * int(self.confusion.sum())

    def per_class(self):
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return (self.confusion.diagonal() / totals).tolist()


def evaluate(model, split, dataset, batch_size, should_stop=lambda: False):
    """The model's Evaluation on SPLIT, or None if should_stop() turned true.
    SPLIT lives where the model does; the sums stay there until the end."""
    scale, shift = data.normalizer(dataset)
    device = split.images.device
    batch_size = min(batch_size, MAX_EVAL_BATCH)
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(data.NUM_CLASSES, data.NUM_CLASSES, dtype=torch.int64, device=device)
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            if should_stop():
                return None
            indices = torch.arange(start, min(start + batch_size, len(split)), device=device)
            x, y = data.make_batch(split, indices, scale, shift)
            output = model(x)
            loss_sum += F.nll_loss(output, y, reduction="sum")
            # One-hot product, not bincount: bincount has no deterministic CUDA
            # kernel (--deterministic), and counts this small are exact in float32.
            truth = F.one_hot(y, data.NUM_CLASSES).float()
            predicted = F.one_hot(output.argmax(dim=1), data.NUM_CLASSES).float()
            confusion += (truth.T @ predicted).long()
    return Evaluation.from_sums(loss_sum.item(), confusion.cpu())


# ----- the `evaluate` command ------------------------------------------------
def add_arguments(p):
    p.add_argument(
        "--data-dir", default="./data", metavar="DIR", help="data root (default: ./data)"
    )
    p.add_argument(
        "--dataset",
        choices=config.DATASETS,
        help="the test set to use; must be the one the model was trained on (default: the "
        "checkpoint's)",
    )
    p.add_argument("--batch-size", type=int, default=500, metavar="N", help="(default: 500)")
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
    write_output(args.out, lambda f: f.write(payload))
    if args.plot:
        write_output(args.plot, lambda f: confusion_picture(result.confusion).save(f, "PNG"))
    say(
        f"{args.checkpoint} (epoch {state['epoch']}): test loss {result.test_loss:.4f}, "
        f"accuracy {100 * result.accuracy:.2f}% on {len(test)} {dataset} test images; "
        f"wrote {args.out}" + (f" and {args.plot}" if args.plot else "")
    )
    return 0


def write_output(path, write):
    """Write a command's output file atomically; one clear error if it cannot be."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        checkpoint.atomic_write(path, write)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None


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
