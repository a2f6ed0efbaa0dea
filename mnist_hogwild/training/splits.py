"""A run's data as the parent sees it: the files the workers map, the
training split, the test split and the held-out validation images, and
their evaluation between epochs on every core."""

import time
from dataclasses import dataclass

import torch

from mnist_hogwild.core.loglines import say
from mnist_hogwild.learn import data
from mnist_hogwild.learn.evaluation import evaluate


@dataclass
class Splits:
    """The run's data: the files (which the workers map), the training split
    (validation images included: the workers skip them, data.hold_out), the
    test split and the validation images (None if none are held out)."""

    files: dict
    train: data.Split
    test: data.Split
    validation: data.Split
    trained: int  # the training images the workers train on
    dataset: str  # (whose normalisation the evaluation applies)

    def evaluated(self):
        """(name, split) of what each epoch is evaluated on."""
        named = [("test", self.test), ("validation", self.validation)]
        return [(name, split) for name, split in named if split is not None]


def load_splits(data_dir, config, device):
    """The run's Splits (of CONFIG's data set under DATA_DIR), on DEVICE."""
    files = data.prepare(data_dir, config.dataset, log=say)
    train = data.map_split(files["train"])
    trained, held = data.hold_out(len(train), config.validation_size)
    validation = data.to_device(data.subset(train, held), device) if len(held) else None
    test = data.to_device(data.load_split(files["test"]), device)
    train = data.to_device(train, device)
    return Splits(files, train, test, validation, len(trained), config.dataset)


def evaluate_splits(model, node, splits, batch_size, threads, stop):
    """({name: Evaluation, or None if stopped}, seconds, a stop signal or 0) of
    MODEL on each split SPLITS.evaluated(). On several machines each node
    evaluates its share of each, and the results are everyone's sums."""
    results, seconds, signum = {}, 0.0, 0
    for name, split in splits.evaluated():
        shard = node.shard(split)
        result, spent = evaluate_on_every_core(
            model, shard, splits.dataset, batch_size, threads, stop.requested
        )
        results[name], stopped = node.combine_evaluation(result, stop.signum)
        seconds, signum = seconds + spent, signum or stopped
    return results, seconds, signum


def evaluate_on_every_core(model, split, dataset, batch_size, threads, stop_requested):
    """(evaluation of MODEL on SPLIT, seconds) with THREADS torch threads: the
    workers are idle meanwhile, so the parent may use every core."""
    before, started = torch.get_num_threads(), time.perf_counter()
    torch.set_num_threads(threads)
    try:
        return (
            evaluate(model, split, dataset, batch_size, stop_requested),
            time.perf_counter() - started,
        )
    finally:
        torch.set_num_threads(before)
