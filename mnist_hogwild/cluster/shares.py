"""Evaluation and epoch totals across nodes: each node evaluates its share of
the test set, the sums make the whole set's result, the leader makes the
metrics row and tells the others."""

import pickle

import torch
import torch.distributed as dist

from mnist_hogwild.cluster.wire import broadcast_bytes
from mnist_hogwild.learn import data
from mnist_hogwild.learn.evaluation import Evaluation


def sum_and_max(total, longest, group):
    """(sum of TOTAL over the nodes, max of LONGEST): an epoch's loss and seconds."""
    values = torch.tensor([total, longest], dtype=torch.float64)
    summed, maxed = values.clone(), values.clone()
    dist.all_reduce(summed, group=group)
    dist.all_reduce(maxed, op=dist.ReduceOp.MAX, group=group)
    return float(summed[0]), float(maxed[1])


def shard(split, rank, world):
    """Node RANK's share of SPLIT (the test set): the nodes evaluate the same
    model, right after the epoch's last sync, each on its share."""
    start, end = (len(split) * r // world for r in (rank, rank + 1))
    return data.Split(split.images[start:end], split.labels[start:end])


def combine_evaluation(result, stop_signum, group):
    """(the whole test set's Evaluation, signum) from every node's RESULT on
    its shard: (None, the signal) if a signal stopped any node's."""
    classes = data.NUM_CLASSES
    confusion = result.confusion if result else torch.zeros(classes, classes, dtype=torch.int64)
    loss_sum = result.loss_sum() if result else 0.0
    # Counts up to 2**53 are exact in float64: one all_reduce for both.
    sums = torch.cat([torch.tensor([loss_sum], dtype=torch.float64), confusion.flatten().double()])
    flags = torch.tensor([stop_signum or 0, result is None], dtype=torch.float64)
    dist.all_reduce(sums, group=group)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    if flags[1]:
        return None, int(flags[0])
    combined = sums[1:].round().to(torch.int64).view(classes, classes)
    return Evaluation.from_sums(float(sums[0]), combined), int(flags[0])


def share_evaluation(row, stop_signum, rank, group):
    """The leader (rank 0) makes the row; every node gets (row, signum): the
    leader's metrics row, or None and the signal that stopped it."""
    message = pickle.dumps((row, stop_signum or 0)) if rank == 0 else b""
    return pickle.loads(broadcast_bytes(message, 0, rank, group))
