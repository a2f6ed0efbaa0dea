"""--target-accuracy within an epoch: judged at the interval rows as well as
at each epoch's end, so that a run that gets there early in an epoch stops
there (saved, exit 0) instead of training on to the epoch's end.

A check costs an evaluation, and the epoch's rows come often (every
--log-interval batches), so a check is two steps: a probe of a fixed part of
the split that decides (the validation images, or the test set where none are
held out), evaluated while the workers train on; and, only when the probe
comes within its sampling error of the target, the whole split, with the
workers paused (the model still): the same judgement an epoch's end makes. An interval row is checked while
the checks so far have cost at most BUDGET of the time trained, so they stay
a small share of any run, on any machine; docs/performance.md measures them.

One machine only: several nodes stop together at an agreed sync, and judge
the target at an epoch's end.
"""

import math
import time

import torch

from mnist_hogwild.learn import data
from mnist_hogwild.learn.evaluation import evaluate
from mnist_hogwild.training.outcome import reached_target

PROBE_IMAGES = 500  # the probe: the first images of the split that decides
BUDGET = 1 / 10  # the checks' most share of the time trained


class TargetReached(Exception):
    """The whole split that decides reached the target; the workers are paused."""


class EpochTarget:
    """--target-accuracy TARGET judged at an epoch's end only (several
    machines), or no target (0); PER_EPOCH: batches in an epoch."""

    def __init__(self, target, per_epoch):
        self.target, self.per_epoch = target, per_epoch

    def check(self):
        pass

    def reached(self, row, last, step):
        """True (and one line) if metrics ROW reached the target; LAST: the
        run's last planned epoch; STEP: where in its epoch ROW was made, None
        at its end."""
        if step is None:
            then = "the last planned epoch" if last else "stopping early"
        else:
            then = f"stopping early, at batch {step} of {self.per_epoch}{self.cost()}"
        return reached_target(row, self.target, then)

    def cost(self):
        return ""


class TargetWatch(EpochTarget):
    """Checks the shared MODEL against TARGET at interval rows (see the module
    docstring); COUNTERS and CHECK pause and release the workers."""

    def __init__(self, target, per_epoch, model, split, evaluation, counters, check):
        super().__init__(target, per_epoch)
        self.model, self.split = model, split
        self.probe = data.Split(split.images[:PROBE_IMAGES], split.labels[:PROBE_IMAGES])
        # EVALUATION: (data set, batch size, threads for the whole split)
        self.dataset, self.batch_size, self.threads = evaluation
        self.counters, self.pool_check = counters, check
        self.started, self.spent = time.perf_counter(), 0.0
        self.probes = self.confirmations = 0
        # The probe's accuracy is the split's give or take its sampling error;
        # two standard errors below the target still call for the whole split.
        n = len(self.probe.labels)
        self.gate = target - 2 * math.sqrt(target * (100 - target) / n)

    def check(self):
        """At an interval row: raise TargetReached (the workers paused) when
        the whole split reaches the target; else let them train on."""
        if self.spent > BUDGET * (time.perf_counter() - self.started):
            return
        started = time.perf_counter()
        try:
            self.probes += 1
            if self.accuracy(self.probe, threads=1) >= self.gate:
                self.confirm()
        finally:
            # The first check's cost is mostly once-only set-up of the
            # evaluation's kernels, which the epoch's end would pay anyway.
            if self.probes > 1:
                self.spent += time.perf_counter() - started

    def confirm(self):
        """The whole split, with the workers paused (they keep their limit)."""
        self.confirmations += 1
        limit = self.counters.limit.value
        self.counters.pause(self.pool_check)
        if self.accuracy(self.split, self.threads) >= self.target:
            raise TargetReached()
        self.counters.set_limit(limit, self.pool_check)

    def accuracy(self, split, threads):
        """MODEL's accuracy on SPLIT in percent, on THREADS torch threads (the
        probe takes one: the workers train meanwhile)."""
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return 100 * evaluate(self.model, split, self.dataset, self.batch_size).accuracy
        finally:
            torch.set_num_threads(before)

    def cost(self):
        """What the checks cost, for the line that says the target is reached."""
        return (
            f" (checked at {self.probes} interval rows, {self.confirmations} on the whole "
            f"split: {self.spent:.2f}s)"
        )


def target_watch(trainer, options):
    """TRAINER's watch for --target-accuracy within its epochs."""
    target, per_epoch = options.target_accuracy, trainer.per_epoch
    if not target or not trainer.node.pauses_anywhere:
        return EpochTarget(target, per_epoch)
    splits = trainer.splits
    split = splits.validation if splits.validation is not None else splits.test
    evaluation = (splits.dataset, options.test_batch_size, trainer.eval_threads)
    counters, check = trainer.counters, trainer.pool.check
    return TargetWatch(target, per_epoch, trainer.model, split, evaluation, counters, check)
