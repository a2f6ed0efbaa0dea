"""The sync itself: what each node changed since the last combined state is
summed over the nodes while the workers train on, and landed at the next
sync (or at once, at a flush). The arithmetic and bookkeeping only; which
collectives to start, and when, the node decides (nodes.py)."""

import torch
import torch.distributed as dist

from mnist_hogwild.cluster.wire import copy_into, flat


class InFlight:
    """A sync's two all_reduces, started (async_op) and not waited for yet."""

    def __init__(self, summed, maxima, *works):
        self.summed, self.maxima, self.works = summed, maxima, works

    def land(self):
        """(the sum, the maxima) once both have arrived."""
        for work in self.works:
            work.wait()
        return self.summed, self.maxima


class Exchange:
    """The base (the last combined state, bitwise the same on every node),
    the change this node sent and has not landed yet, and how much of the
    nodes' summed change joins the base, tensor by tensor (SCALE)."""

    def __init__(self, params, moments, counters, parameter_share, world):
        """PARAMS, MOMENTS and COUNTERS as the optimizer states them (moments
        averaged over the WORLD nodes, counters added up); parameters join
        the base at PARAMETER_SHARE of the sum (--node-updates)."""
        self.tensors = list(params) + list(moments) + list(counters)
        self.base = flat(self.tensors)
        self.sent = torch.zeros_like(self.base)
        self.in_flight = None
        parts = ((params, parameter_share), (moments, 1.0 / world), (counters, 1.0))
        self.scale = torch.cat(
            [torch.full((sum(t.numel() for t in ts),), f, dtype=torch.float64) for ts, f in parts]
        )

    def change(self):
        """What this node changed since the base, less what it sent already."""
        return flat(self.tensors).sub_(self.base).sub_(self.sent)

    def send(self, change, flags, group):
        """Start summing CHANGE and taking the maximum of FLAGS over the nodes: in flight."""
        change = change.clone()  # summed in place, while this node goes on with CHANGE
        self.in_flight = InFlight(
            change,
            flags,
            dist.all_reduce(change, group=group, async_op=True),
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group, async_op=True),
        )

    def land(self):
        """Wait for the sync in flight, if any, and add its sum to the base: the
        agreed flags, or None if none was in flight."""
        if self.in_flight is None:
            return None
        summed, maxima = self.in_flight.land()
        self.in_flight = None
        self.base.add_(summed.mul_(self.scale))
        return maxima

    def apply(self, change, flushed):
        """Copy the combined state into the workers' tensors: the base alone
        after a flush (every node then holds the same), else the base plus
        this node's own CHANGE, which the others get at the next sync."""
        if flushed:
            self.sent.zero_()
            combined = self.base
        else:
            self.sent = change
            combined = self.base + change
        copy_into(self.tensors, combined)
        if any(t.is_cuda for t in self.tensors):
            # The copies are queued on this process's CUDA stream; the workers
            # run in other processes and streams, with nothing ordering them
            # after the copy. Wait for it before they are let go.
            torch.cuda.synchronize()
