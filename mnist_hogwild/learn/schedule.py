"""Which batches make up an epoch, in what order, who trains them, and at what
learning rate. Everything here is a pure function of the seed and a batch's
global index, so every worker and every node computes the same answer, and a
resumed run continues exactly where the interrupted one stopped.

How an epoch is split: the epoch's shuffled sample order is a permutation
derived from (seed, epoch), cut into global batches 0..B-1. Workers claim the
next unclaimed batch from a shared counter, so the workers together make one
pass over the training set per epoch, whatever --num-processes is, and the
batches finished always form a prefix 0..step-1 once the workers are paused.
That prefix is the whole progress a checkpoint has to record.
"""

import hashlib
from dataclasses import dataclass

import torch

from mnist_hogwild.core.tables import SCHEDULES


@dataclass(frozen=True)
class Schedule:
    """Which global batches this node trains, in which order: its local batch L
    (0, 1, ... from the start of this run) -> global batch g.

    A run starts at global batch START (a checkpoint's epoch * PER_EPOCH + step).
    Each epoch's remaining batches are dealt round-robin to the WORLD nodes, so
    together they make exactly one pass per epoch, and when every node has
    trained the same number j of its batches of an epoch, the finished batches
    are the epoch's prefix of j * WORLD: a checkpoint there is exact. With one
    node, g = START + L, as on a single machine."""

    per_epoch: int
    start: int
    rank: int = 0
    world: int = 1

    def epoch_start(self, epoch):
        """Global batch where this run's part of EPOCH starts."""
        return max(epoch * self.per_epoch, self.start)

    def count(self, epoch):
        """How many batches of EPOCH this node trains in this run."""
        remaining = (epoch + 1) * self.per_epoch - self.epoch_start(epoch) - self.rank
        return max(0, -(-remaining // self.world))

    def local_start(self, epoch):
        """Local index of this node's first batch of EPOCH. (Closed form: every
        epoch after the first of the run is whole, so they all count the same.)"""
        first = self.start // self.per_epoch
        if epoch <= first:
            return 0
        return self.count(first) + (epoch - first - 1) * self.count(first + 1)

    def local_end(self, epoch):
        """Local index one past this node's last batch of EPOCH."""
        return self.local_start(epoch) + self.count(epoch)

    def global_batch(self, local):
        epoch = self.start // self.per_epoch
        while local >= self.count(epoch):
            local -= self.count(epoch)
            epoch += 1
        return self.epoch_start(epoch) + self.rank + local * self.world

    def step(self, epoch, local_done):
        """Batches of EPOCH finished by all nodes together, when every node has
        finished LOCAL_DONE - local_start(EPOCH) of its own (the same number)."""
        done = self.epoch_start(epoch) + (local_done - self.local_start(epoch)) * self.world
        return min(done, (epoch + 1) * self.per_epoch) - epoch * self.per_epoch

    def common_count(self, epoch):
        """The number of EPOCH's batches every node has (sync points lie below it)."""
        return ((epoch + 1) * self.per_epoch - self.epoch_start(epoch)) // self.world


def derived_seed(seed, *parts):
    """A 63-bit seed from (seed, parts): the same numbers in any process or run."""
    digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def epoch_order(seed, epoch, num_samples):
    generator = torch.Generator()
    generator.manual_seed(derived_seed(seed, "order", epoch))
    return torch.randperm(num_samples, generator=generator)


def epoch_samples(seed, epoch, trained):
    """The indices of the training split in EPOCH's order: a permutation of
    TRAINED (the indices not held out for validation)."""
    return trained[epoch_order(seed, epoch, len(trained)).to(trained.device)]


def batches_per_epoch(num_samples, batch_size):
    return -(-num_samples // batch_size)


def learning_rate(config, batch, per_epoch):
    """The learning rate of global batch BATCH: a pure function of its index
    and the planned total (config.epochs * PER_EPOCH), so that every worker
    uses the same rate for the same batch whatever --num-processes or the
    node count, and a resume continues the curve exactly. The shape is
    the table's: core/tables.py SCHEDULES[config.lr_schedule]."""
    total = max(1, config.epochs * per_epoch)
    position = min(batch, total - 1) / total  # in [0, 1)
    return SCHEDULES[config.lr_schedule].shape(config.lr, config.warmup, position, batch, total)


def follows_the_plan(config):
    """Whether the rate depends on the planned length at all (a constant rate
    without a warm-up does not: a resume with another --epochs changes nothing)."""
    return config.lr_schedule != "constant" or config.warmup > 0
