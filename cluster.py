"""Several machines: torch.distributed (gloo) between one leader per node.

Each node runs main.py once, as torchrun's one process per node; that leader
runs the node's Hogwild workers as on a single machine. Between nodes this is
local SGD: every --sync-every batches per node, and at every epoch end, the
leaders pause their workers at the same global batch boundary and average
their models and momentum buffers with all_reduce (Lin et al., "Don't Use
Large Mini-Batches, Use Local SGD", ICLR 2020).

Without torchrun's environment (WORLD_SIZE unset or 1) none of this is used.
"""

import ctypes
import os
import re
from datetime import timedelta

import torch
import torch.distributed as dist

import checkpoint


class ClusterError(Exception):
    """Another node is gone or unreachable (one-line message)."""


def from_env(sync_every, sync_timeout, node_updates="sum", environ=os.environ):
    """A Cluster when torchrun started us as one of several nodes, else None."""
    world = int(environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    wrapped = environ.get("MNIST_HOGWILD_LAUNCHER") == "1"  # main.py --nnodes started us
    return Cluster(int(environ["RANK"]), world, sync_every, sync_timeout, node_updates, wrapped)


def _reason(error):
    """The informative part of a c10d/gloo error: its first line, without the source path."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0][:160].rstrip(" .")


def _collective(what):
    """Turn a failed collective into one ClusterError line (node killed, cut off, timed out)."""

    def wrap(function):
        def run(self, *args, **kwargs):
            try:
                return function(self, *args, **kwargs)
            except (RuntimeError, dist.DistError) as e:
                raise ClusterError(
                    f"node {self.rank}: lost contact with the other nodes during {what} "
                    f"({_reason(e)}; --sync-timeout is {self.timeout:.0f} s)"
                ) from None

        return run

    return wrap


def _flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _copy_into(tensors, flat):
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


class Cluster:
    """This node's view of the job: its rank, the node count, and the collectives."""

    def __init__(self, rank, world, sync_every, sync_timeout, node_updates, wrapped):
        self.rank, self.world = rank, world
        self.sync_every, self.timeout = sync_every, sync_timeout
        self.node_updates, self.wrapped = node_updates, wrapped
        self.sync_seconds, self.syncs = 0.0, 0
        self.reference = None  # the parameters at the last sync ("sum"; see remember)

    @property
    def leader(self):
        return self.rank == 0

    @_collective("start-up")
    def start(self):
        """Join the job (torchrun's MASTER_ADDR/PORT). The timeout bounds every
        collective: a node that is killed or cut off is noticed within it, not
        after gloo's default 30 minutes."""
        dist.init_process_group("gloo", timeout=timedelta(seconds=self.timeout))

    def close(self):
        if dist.is_initialized():
            dist.destroy_process_group()

    def remember(self, params):
        """The parameters every node starts from (the same seed, or the same
        checkpoint): the reference that "sum" measures each node's change from."""
        self.reference = _flat(params).clone()

    @_collective("a sync")
    def synchronise(self, params, buffers, stop_signum, save_now):
        """Combine the nodes' models in place; agree on stopping and saving.

        Parameters, by --node-updates: "sum" adds up what every node changed
        since the last sync (each node's updates count in full, as every
        worker's do in Hogwild; measured best at K = 10, see README), "average"
        takes the mean of the models (local SGD's rule; it divides the step
        per sample by the node count). Momentum buffers are averaged: they are
        state, not updates.

        In place means copied into the very tensors the workers hold (shared
        memory): .data is never rebound. This is why
        torch.distributed.algorithms.model_averaging is not used: its averagers
        skip parameters that have no .grad (the parent's copy never has one:
        the workers train) and rebind p.data, which the workers would not see.
        Returns (signal number that stops the job or 0, whether to save now)."""
        flat_params, flat_buffers = _flat(params), _flat(buffers)
        if self.node_updates == "sum":
            flat_params.sub_(self.reference)  # this node's change since the last sync
        flags = torch.tensor([stop_signum or 0, int(save_now)], dtype=torch.int64)
        dist.all_reduce(flat_params)
        dist.all_reduce(flat_buffers)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if self.node_updates == "sum":
            flat_params.add_(self.reference)
            self.reference = flat_params.clone()
        else:
            flat_params.div_(self.world)
        _copy_into(params, flat_params)
        _copy_into(buffers, flat_buffers.div_(self.world))
        return int(flags[0]), bool(flags[1])

    @_collective("the end of an epoch")
    def sum_and_max(self, total, longest):
        """(sum of TOTAL over the nodes, max of LONGEST): an epoch's loss and seconds."""
        values = torch.tensor([total, longest], dtype=torch.float64)
        summed, maxed = values.clone(), values.clone()
        dist.all_reduce(summed)
        dist.all_reduce(maxed, op=dist.ReduceOp.MAX)
        return float(summed[0]), float(maxed[1])

    @_collective("the evaluation")
    def share_evaluation(self, result, stop_signum):
        """The leader evaluates; every node gets (result, signum): the leader's
        (loss, accuracy, seconds), or None and the signal that stopped it."""
        values = torch.zeros(5, dtype=torch.float64)
        if self.leader:
            ok = result is not None
            values = torch.tensor(
                [*(result or (0, 0, 0)), float(ok), float(stop_signum or 0)], dtype=torch.float64
            )
        dist.broadcast(values, src=0)
        if values[3]:
            return tuple(float(v) for v in values[:3]), None
        return None, int(values[4])

    @_collective("the agreement on a checkpoint")
    def newest_checkpoint(self, path, model_state):
        """Every node's view of the newest checkpoint any node holds (by global
        progress), as a loaded state dict, or None if no node has one. A node
        with an empty volume gets it from the others; so losing any one disk
        loses nothing."""
        mine = checkpoint.load(path, model_state) if os.path.exists(path) else None
        progress = -1 if mine is None else mine["epoch"] * mine["batches_per_epoch"] + mine["step"]
        everyone = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(everyone, torch.tensor([progress], dtype=torch.int64))
        newest = max(int(p) for p in everyone)
        if newest < 0:
            return None
        owner = min(r for r, p in enumerate(everyone) if int(p) == newest)
        payload = self._file_bytes(path) if self.rank == owner else b""
        size = torch.tensor([len(payload)], dtype=torch.int64)
        dist.broadcast(size, src=owner)
        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else None
        if data is None:
            data = torch.zeros(int(size), dtype=torch.uint8)
        dist.broadcast(data, src=owner)
        if self.rank == owner:
            return mine
        payload = ctypes.string_at(data.data_ptr(), data.numel())  # (no numpy in the image)
        return checkpoint.load_bytes(payload, f"node {owner}'s {path}", model_state)

    @staticmethod
    def _file_bytes(path):
        with open(path, "rb") as f:
            return f.read()
