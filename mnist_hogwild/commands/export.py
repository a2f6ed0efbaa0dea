"""The `export` command: the model as one file that plain torch loads, without
this repository: torch.export's program (.pt2, torch.export.load) or
TorchScript (.pt, torch.jit.load).

The exported model is the Net itself: it takes a float batch [N, 1, 28, 28]
already normalised ((pixel / 255 - mean) / std) and returns log-probabilities
[N, 10]. The file carries mnist_hogwild.json with the dataset, the classes
(the output's index -> name), mean and std, so that a serving stack needs
nothing else; README shows how to read it (torch's extra_files).
"""

import io
import json
import os

import torch

from mnist_hogwild.training import beside
from mnist_hogwild.training import checkpoint
from mnist_hogwild.core.tables import DATASETS
from mnist_hogwild.commands import figures
from mnist_hogwild.commands.output import check_output, write_output
from mnist_hogwild.core.loglines import say

# flags.EXPORT_FORMATS -> the file extension (tests/test_commands.py checks they agree).
FORMATS = {"pt2": ".pt2", "torchscript": ".pt"}


def metadata(state):
    dataset = state["config"].get("dataset", "mnist")
    info = DATASETS[dataset]
    return {
        "dataset": dataset,
        "input": "float32 [N, 1, 28, 28], (pixel / 255 - mean) / std, light on dark",
        "output": "log-probabilities [N, 10]",
        "classes": list(figures.class_names(dataset)[1]),  # the output's index -> name
        "mean": info.mean,
        "std": info.std,
        "epoch": state["epoch"],
        "accuracy_percent": (
            round(state["metrics"][-1]["accuracy_percent"], 2) if state["metrics"] else None
        ),
    }


def default_out(model, fmt):
    """The checkpoint's name with the format's extension; STEM.export.EXT where
    that is the checkpoint itself (Compose's mnist_cnn.pt, as TorchScript).
    A model of a history goes beside the history (only training writes in it)."""
    stem, ext = os.path.splitext(model)[0], FORMATS[fmt]
    if beside.in_history(model):
        stem = os.path.join(os.path.dirname(os.path.dirname(model)), os.path.basename(stem))
    return stem + (".export" if stem + ext == model else "") + ext


def run_command(args):
    out = args.out or default_out(args.checkpoint, args.format)
    check_output(out, args.checkpoint)
    model, state = checkpoint.load_model(args.checkpoint)
    extra = {"mnist_hogwild.json": json.dumps(metadata(state))}
    buffer = io.BytesIO()
    example = torch.zeros(2, 1, 28, 28)
    if args.format == "pt2":
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, buffer, extra_files=extra)
    else:
        torch.jit.save(torch.jit.trace(model, example), buffer, _extra_files=extra)
    payload = buffer.getvalue()
    write_output(out, lambda f: f.write(payload), args.checkpoint)
    say(f"exported {args.checkpoint} (epoch {state['epoch']}) as {args.format} to {out}")
    return 0
