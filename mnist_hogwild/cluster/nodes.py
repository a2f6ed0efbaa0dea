"""This machine's place in the job: one node of a one-node job (LocalNode, the
default), or one of several under torchrun (ClusterNode, gloo between one
leader per node). The trainer calls the same methods on either; the local
version does nothing where there is nothing to do.

Between nodes this is local SGD: every --sync-every batches per node, and at
every epoch end, the leaders pause their workers at the same global batch
boundary and combine their models and optimizer state with all_reduce (Lin
et al., "Don't Use Large Mini-Batches, Use Local SGD", ICLR 2020), the sum
travelling while the workers train on (ClusterNode.synchronise).
"""

import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from mnist_hogwild.cluster import agreement, shares
from mnist_hogwild.cluster.cadence import UNKNOWN, Cadence, auto_most, cautions
from mnist_hogwild.cluster.exchange import Exchange
from mnist_hogwild.cluster.wire import collective, copy_into, flat

EXIT_PEER_LOST = 75  # EX_TEMPFAIL: another node is gone; retrying the job may work


def from_env(options, environ=os.environ):
    """A ClusterNode when torchrun started us as one of several nodes, else a LocalNode."""
    world = int(environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return LocalNode()
    return ClusterNode(int(environ["RANK"]), world, options)


class LocalNode:
    """A single machine: a one-node job. Its workers may pause at any batch (a
    save or a stop needs nobody else's agreement), so its only boundary in an
    epoch is the epoch's end, and its collectives return their input."""

    rank, world, leader = 0, 1, True
    pauses_anywhere = True
    syncs, sync_seconds = 0, 0.0

    def describe(self):
        return None

    def cautions(self):
        return []

    def start(self):
        pass

    def agree_on_job(self, settings, stop_signum):
        return stop_signum or 0

    def begin(self, params, moments, counters):
        pass

    def boundaries(self, schedule, epoch, done, end):
        return [end]

    def synchronise(self, stop_signum, save_due, at_end):
        return stop_signum or 0, save_due

    def sum_and_max(self, total, longest):
        return total, longest

    def shard(self, split):
        return split

    def combine_evaluation(self, result, stop_signum):
        return result, stop_signum or 0

    def share_evaluation(self, row, stop_signum):
        return row, stop_signum or 0

    def checkpoint_writer(self, path):
        return 0

    def newest_checkpoint(self, path, load, warn):
        return load(path) if os.path.exists(path) else None

    def close(self):
        pass


class ClusterNode:
    """This node's view of a torchrun job: its rank, the node count, and the
    collectives, each a step of its own module: the agreement (agreement.py),
    the sync cadence (cadence.py), the exchange of changes (exchange.py) and
    the evaluation shares (shares.py)."""

    pauses_anywhere = False  # a sync needs every node at the same boundary

    def __init__(self, rank, world, options):
        self.rank, self.world, self.options = rank, world, options
        self.leader = rank == 0
        self.syncs, self.sync_seconds = 0, 0.0
        self.exchange = None  # see begin
        self.sync_group = None
        self.cadence = Cadence(options.sync_every, auto_most(options.node_updates, world))

    def describe(self):
        return self.cadence.describe(f"node {self.rank} of {self.world}")

    def cautions(self):
        return cautions(self.options.node_updates, self.options.sync_every, self.world)

    @collective("start-up")
    def start(self):
        """Join the job (torchrun's MASTER_ADDR/PORT). Start-up (data download,
        CUDA start) may take long: its collectives wait --start-timeout. The
        syncs have a group of their own with --sync-timeout, so that a node
        killed or cut off mid-training is noticed within it."""
        dist.init_process_group("gloo", timeout=timedelta(seconds=self.options.start_timeout))
        self.sync_group = dist.new_group(
            backend="gloo", timeout=timedelta(seconds=self.options.sync_timeout)
        )

    def close(self):
        if dist.is_initialized():
            dist.destroy_process_group()

    @collective("the check that every node runs the same job")
    def agree_on_job(self, settings, stop_signum):
        """See agreement.same_job."""
        return agreement.same_job(settings, stop_signum, self.world)

    @collective("the agreement on who writes the checkpoint")
    def checkpoint_writer(self, path):
        """See agreement.checkpoint_writer."""
        return agreement.checkpoint_writer(path, self.rank, self.world)

    @collective("the agreement on a checkpoint")
    def newest_checkpoint(self, path, load, warn):
        """See agreement.newest_checkpoint."""
        return agreement.newest_checkpoint(path, load, warn, self.rank, self.world)

    def begin(self, params, moments, counters):
        """Every node starts from rank 0's model and optimizer state (as DDP does:
        the same seed should give the same model, but nothing checks that the
        other nodes' seeds or checkpoints agree). That is the first combined
        state, the base that each node's changes are measured from."""
        params, moments, counters = list(params), list(moments), list(counters)
        self._broadcast(params + moments + counters)
        share = 1.0 if self.options.node_updates == "sum" else 1.0 / self.world
        self.exchange = Exchange(params, moments, counters, share, self.world)

    @collective("start-up")
    def _broadcast(self, tensors):
        flat_tensors = flat(tensors)
        dist.broadcast(flat_tensors, src=0)
        copy_into(tensors, flat_tensors)

    def boundaries(self, schedule, epoch, done, end):
        """Where the workers pause in EPOCH (DONE batches done): every
        --sync-every batches, and at END (see Cadence)."""
        first = schedule.local_start(epoch)
        return self.cadence.boundaries(first, done, schedule.common_count(epoch), end)

    @collective("a sync", training=True)
    def synchronise(self, stop_signum, save_due, at_end):
        """Combine the nodes' models (the tensors given to begin) in place; agree on stopping and saving.

        What each node changed since the last sync is summed over the nodes
        and added to the base (the last combined state): parameters by
        --node-updates, "sum" in full (every node's updates count, as every
        worker's do in Hogwild), "average" divided by the node count (local
        SGD's rule: the mean of the models); optimizer state (momentum, Adam's
        moments) averaged, as it is state, not updates; counters (Adam's step
        counts) summed.

        The sum travels while the workers train on (overlapped local SGD,
        Wang et al., "Overlap Local-SGD", ICASSP 2020): a sync sends this
        node's change and lands the one sent at the previous sync, so a node
        waits for the others only if it got a whole interval ahead of them.
        The workers keep their own change in full meanwhile; the other nodes'
        arrive one interval late. A sync waited for the others every time
        before, and that wait (their CPU time slices, not the transfer) cost
        more than the transfer. At the end of an epoch, and at the sync after
        any node asked for a stop or a save, the sum is landed at once
        ("flush"): every node then holds bitwise the same model. Every node
        decides to flush from what all of them agreed, so the syncs pair up.

        In place means copied into the very tensors the workers hold (shared
        memory): .data is never rebound. This is why
        torch.distributed.algorithms.model_averaging is not used: its averagers
        skip parameters that have no .grad (the parent's copy never has one:
        the workers train) and rebind p.data, which the workers would not see.
        Returns (signal number that stops the job or 0, whether to save now)."""
        started, exchange = time.perf_counter(), self.exchange
        change = exchange.change()
        flags = [stop_signum or 0, int(save_due), *self.cadence.measures(started)]
        flags = torch.tensor(flags, dtype=torch.float64)
        agreed = exchange.land()
        flush = at_end or (agreed is not None and bool(agreed[:2].any()))
        exchange.send(change, flags, self.sync_group)
        if flush:
            maxima = exchange.land()
            agreed = maxima if agreed is None else torch.maximum(agreed, maxima)
        exchange.apply(change, flush)
        seconds = time.perf_counter() - started
        self.syncs += 1
        self.sync_seconds += seconds
        if agreed is None:  # nothing landed: the first sync after a flush
            self.cadence.agreed([UNKNOWN, UNKNOWN], seconds)
            return 0, False
        self.cadence.agreed(agreed[2:].tolist(), seconds)
        return int(agreed[0]), bool(agreed[1])

    @collective("the end of an epoch", training=True)
    def sum_and_max(self, total, longest):
        return shares.sum_and_max(total, longest, self.sync_group)

    def shard(self, split):
        return shares.shard(split, self.rank, self.world)

    @collective("the evaluation", training=True)
    def combine_evaluation(self, result, stop_signum):
        return shares.combine_evaluation(result, stop_signum, self.sync_group)

    @collective("the evaluation", training=True)
    def share_evaluation(self, row, stop_signum):
        return shares.share_evaluation(row, stop_signum, self.rank, self.sync_group)
