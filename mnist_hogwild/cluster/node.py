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

import ctypes
import io
import json
import math
import os
import pickle
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from mnist_hogwild.learn import data
from mnist_hogwild.core.errors import CheckpointError, ClusterError, UsageError, one_line
from mnist_hogwild.learn.evaluation import Evaluation

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

    def begin(self, params, state_tensors, counters):
        pass

    def boundaries(self, schedule, epoch, done, end):
        return [end]

    def synchronise(self, params, state_tensors, counters, stop_signum, save_due, at_end):
        return stop_signum or 0, save_due

    def sum_and_max(self, total, longest):
        return total, longest

    def shard(self, split):
        return split

    def combine_evaluation(self, result, stop_signum):
        return result, stop_signum or 0

    def share_evaluation(self, row, stop_signum):
        return row, stop_signum or 0

    def newest_checkpoint(self, path, load, warn):
        return load(path) if os.path.exists(path) else None

    def close(self):
        pass


def _collective(what):
    """Turn a failed collective into one ClusterError line (node killed, cut off, timed out)."""

    def wrap(function):
        def run(self, *args, **kwargs):
            try:
                return function(self, *args, **kwargs)
            except (RuntimeError, dist.DistError) as e:
                raise ClusterError(
                    f"node {self.rank}: lost contact with the other nodes during {what} "
                    f"({one_line(e, 160)}; --sync-timeout is {self.options.sync_timeout:g} s)"
                ) from None

        return run

    return wrap


# Objects between nodes. Not torch's all_gather_object/broadcast_object_list:
# they read the bytes back with tensor.numpy(), and the image has no numpy
# (it would add tens of MB for this alone). These send pickles as uint8
# tensors and read them back with ctypes, nothing else.
def _bytes_tensor(payload):
    return (
        torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        if payload
        else torch.zeros(0, dtype=torch.uint8)
    )


def _tensor_bytes(tensor, size):
    return ctypes.string_at(tensor.data_ptr(), size) if size else b""


def _all_gather_objects(obj, world, group=None):
    """Every node's OBJ, in rank order."""
    mine = _bytes_tensor(pickle.dumps(obj))
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([mine.numel()], dtype=torch.int64), group=group)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: mine.numel()] = mine
    everyone = [torch.zeros(longest, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(everyone, padded, group=group)
    return [pickle.loads(_tensor_bytes(t, int(n))) for t, n in zip(everyone, sizes, strict=True)]


def _broadcast_bytes(payload, src, rank, group=None):
    """SRC's PAYLOAD (bytes) on every node."""
    size = torch.tensor([len(payload) if rank == src else 0], dtype=torch.int64)
    dist.broadcast(size, src=src, group=group)
    data = _bytes_tensor(payload) if rank == src else torch.zeros(int(size), dtype=torch.uint8)
    dist.broadcast(data, src=src, group=group)
    return _tensor_bytes(data, int(size))


def _flat(tensors):
    """TENSORS as one float64 CPU vector (gloo's transport; exact for float32)."""
    parts = [t.detach().reshape(-1).to("cpu", torch.float64) for t in tensors]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def _copy_into(tensors, flat):
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


SYNC_SHARE = 0.05  # --sync-every auto: the share of the training time syncs may take
AUTO_FIRST = 10  # --sync-every auto: batches between syncs until a sync has been measured
AUTO_MOST = 50  # --sync-every auto: never more batches between syncs than this
# --sync-every auto: never fewer batches between syncs than this (or than the
# cap, if that is smaller). A sync costs more than the time it blocks: the
# workers pause and start again, and the sum travelling meanwhile takes CPU
# time from them. Without this floor auto saw only the blocking time and
# went down to a few batches, and the job took longer than at a fixed 10
# (docs/performance.md).
AUTO_LEAST = 10
UNKNOWN = -1.0  # a measure not known yet (every real one is positive)
# The largest --sync-every that stayed within a point of one node's accuracy
# with --node-updates sum, by node count (real MNIST, 3 epochs, and at 2
# nodes Fashion-MNIST, 6 epochs, where auto runs that reached K 20 lost up to
# 3 points though MNIST held to 50; the next measured K lost points, or
# diverged: sum is an outer learning rate of N, and the other nodes' changes
# arrive one interval late, which at 3 and 4 nodes cost 3 and 10 points at
# K 10 where K 5 held).
# Fewer nodes and a smaller K are safer, so a job is in the measured safe
# region if a measured safe point has as many nodes or more and as large a K
# or larger. --node-updates average lost more than a point at every measured
# K and node count (it divides each step by N), and about as much at any K.
# Measured by scripts/cluster_bench.py; the table is in docs/performance.md.
SAFE_SUM_K = {2: 10, 3: 5, 4: 5}


def safe_sync_every(rule, world):
    """The largest K measured safe for RULE at WORLD nodes, or None if none is."""
    if rule != "sum":
        return None
    ks = [k for nodes, k in SAFE_SUM_K.items() if nodes >= world]
    return max(ks) if ks else None


def auto_most(rule, world):
    """The largest K --sync-every auto may use at WORLD nodes: the K measured
    safe; for sum beyond the measured node counts, the smallest of those;
    for average (as far from one node at any K), AUTO_MOST."""
    if rule == "average":
        return AUTO_MOST
    safe = safe_sync_every(rule, world)
    return min(SAFE_SUM_K.values()) if safe is None else min(safe, AUTO_MOST)


def cautions(rule, every, world):
    """One-line warnings for a job outside the measured safe region."""
    if rule == "average":
        return [
            "--node-updates average divides each node's step by the node count: it lost more "
            "than a point against one node at every measured K and node count "
            "(docs/performance.md); train more epochs, or use sum"
        ]
    safe = safe_sync_every(rule, world)
    if safe is None:
        most = auto_most(rule, world)
        advice = f"auto keeps K at most {most}" if every == 0 else f"keep K at most {most}"
        return [
            f"--node-updates sum was measured at up to {max(SAFE_SUM_K)} nodes, not {world}: "
            f"its accuracy falls as nodes x --sync-every grows (docs/performance.md); {advice}"
        ]
    if every > safe:
        return [
            f"--sync-every {every} at {world} nodes is beyond what was measured safe for "
            f"--node-updates sum (at most {safe}; beyond it accuracy fell by points, or training "
            f"diverged, docs/performance.md): use a smaller K, or auto"
        ]
    return []


class Cadence:
    """How many batches a node trains between syncs (--sync-every): K, fixed,
    or ("auto", 0) adapted at each sync so that syncs take about SYNC_SHARE
    of the training time on a fast machine and a slow one alike.

    A sync's cost (sending the model, and waiting for the node that is
    behind) grows more slowly than K, a batch's time not at all, so
    K = cost x (1 - share) / (share x batch time) brings the share near
    SYNC_SHARE. The nodes agree on the measurements inside the sync (one MAX
    all_reduce): the dearest sync and the slowest batch time any node saw, so
    every node computes the same K and the boundaries stay paired. The job's
    first sync, which also waits for the slowest start, is not counted. K
    changes by at most 2x per sync and stays between AUTO_LEAST and MOST
    (the K measured safe for accuracy): a node that is always slower makes
    the others wait in proportion to K, which no K can cure."""

    def __init__(self, every, most=AUTO_MOST):
        self.auto, self.most, self.least = every == 0, most, min(AUTO_LEAST, most)
        self.k = min(AUTO_FIRST, most) if self.auto else every
        self.synced = False  # a sync has happened (the first is not measured)
        self.last_sync = None  # seconds the previous sync took on this node
        self.mark = (time.perf_counter(), 0)  # (when, batch) the interval began
        self.upcoming = 0  # the boundary the workers train up to

    def measures(self, now):
        """This node's [last sync seconds, seconds per batch] for the interval
        that ends at the upcoming boundary at NOW; UNKNOWN where none."""
        (when, batch), boundary = self.mark, self.upcoming
        # An interval with no batch: a resume passes the boundaries before its batch at once.
        per_batch = (now - when) / (boundary - batch) if boundary > batch else UNKNOWN
        return [UNKNOWN if self.last_sync is None else self.last_sync, per_batch]

    def agreed(self, maxima, seconds):
        """After a sync that took SECONDS here: the next K from the nodes'
        MAXIMA of measures() (the same on every node)."""
        self.last_sync = seconds if self.synced else None
        self.synced = True
        self.mark = (time.perf_counter(), max(self.upcoming, self.mark[1]))
        cost, per_batch = maxima
        if not self.auto or cost <= 0 or per_batch <= 0:
            return
        wanted = math.ceil(cost * (1 - SYNC_SHARE) / (SYNC_SHARE * per_batch))
        self.k = max(self.least, self.k // 2, min(wanted, 2 * self.k, self.most))

    def boundaries(self, first, done, common, end):
        """Batch indexes to pause at in an epoch that starts at batch FIRST and
        whose workers have done DONE batches (more than FIRST after a resume):
        every K batches from FIRST (K read as each comes), then END. COMMON is
        the batch count every node has in this epoch, so every node gets the
        same number of boundaries."""
        self.mark = (time.perf_counter(), max(first, done))  # evaluation is not counted
        offset = 0
        while True:
            offset += self.k
            if offset >= common or first + offset >= end:
                break
            self.upcoming = first + offset
            yield self.upcoming
        self.upcoming = end
        yield end


class _InFlight:
    """A sync's two all_reduces, started (async_op) and not waited for yet."""

    def __init__(self, summed, maxima, *works):
        self.summed, self.maxima, self.works = summed, maxima, works

    def land(self):
        """(the sum, the maxima) once both have arrived."""
        for work in self.works:
            work.wait()
        return self.summed, self.maxima


class ClusterNode:
    """This node's view of a torchrun job: its rank, the node count, and the collectives."""

    pauses_anywhere = False  # a sync needs every node at the same boundary

    def __init__(self, rank, world, options):
        self.rank, self.world, self.options = rank, world, options
        self.leader = rank == 0
        self.syncs, self.sync_seconds = 0, 0.0
        self.base = self.sent = self.scale = None  # see begin
        self.in_flight = None  # the sync whose sum is travelling (see synchronise)
        self.sync_group = None
        self.cadence = Cadence(options.sync_every, auto_most(options.node_updates, world))

    def describe(self):
        cadence, me = self.cadence, f"node {self.rank} of {self.world}"
        if cadence.auto and cadence.least < cadence.most:
            return (
                f"{me}: syncing every {cadence.k} batches, then as often as keeps the syncs near "
                f"{100 * SYNC_SHARE:g}% of the time (every {cadence.least} to {cadence.most} "
                f"batches; --sync-every auto)"
            )
        if cadence.auto:
            return (
                f"{me}: syncing every {cadence.k} batches (--sync-every auto: the most measured "
                f"safe for accuracy at this node count)"
            )
        return f"{me}: syncing every {cadence.k} batches"

    def cautions(self):
        return cautions(self.options.node_updates, self.options.sync_every, self.world)

    @_collective("start-up")
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

    @_collective("the check that every node runs the same job")
    def agree_on_job(self, settings, stop_signum):
        """Stop with one line, on every node, if the nodes' SETTINGS (a dict of
        what must match) differ: naming the setting and the nodes. A
        UsageError (exit 2), as a flag that differs from the checkpoint's is:
        a retry with the same flags fails the same way, so an orchestrator
        should not retry it (docs/kubernetes.yaml fails the Job on 2). Also the
        first chance to stop together: the signal any node got during its
        start-up (or 0)."""
        everyone = _all_gather_objects((settings, stop_signum or 0), self.world)
        signums = [s for _, s in everyone]
        everyone = [s for s, _ in everyone]
        for name in settings:
            values = [s.get(name) for s in everyone]
            if len({json.dumps(v) for v in values}) > 1:
                per_node = ", ".join(f"node {r}: {v}" for r, v in enumerate(values))
                raise UsageError(
                    f"the nodes run different jobs: {name} differs ({per_node}); start every "
                    f"node with the same flags"
                )
        return max(signums)

    def begin(self, params, state_tensors, counters):
        """Every node starts from rank 0's model and optimizer state (as DDP does:
        the same seed should give the same model, but nothing checks that the
        other nodes' seeds or checkpoints agree). That is the first combined
        state, the base that each node's changes are measured from."""
        params, state_tensors, counters = list(params), list(state_tensors), list(counters)
        self._broadcast(params + state_tensors + counters)
        self.base = _flat(params + state_tensors + counters)
        self.sent = torch.zeros_like(self.base)
        self.in_flight = None
        # How much of the nodes' summed changes joins the base, by part:
        # parameters by --node-updates, optimizer state averaged, counters summed.
        per_param = 1.0 if self.options.node_updates == "sum" else 1.0 / self.world
        parts = ((params, per_param), (state_tensors, 1.0 / self.world), (counters, 1.0))
        self.scale = torch.cat(
            [torch.full((sum(t.numel() for t in ts),), f, dtype=torch.float64) for ts, f in parts]
        )

    @_collective("start-up")
    def _broadcast(self, tensors):
        flat = _flat(tensors)
        dist.broadcast(flat, src=0)
        _copy_into(tensors, flat)

    def boundaries(self, schedule, epoch, done, end):
        """Where the workers pause in EPOCH (DONE batches done): every
        --sync-every batches, and at END (see Cadence)."""
        first = schedule.local_start(epoch)
        return self.cadence.boundaries(first, done, schedule.common_count(epoch), end)

    @_collective("a sync")
    def synchronise(self, params, state_tensors, counters, stop_signum, save_due, at_end):
        """Combine the nodes' models in place; agree on stopping and saving.

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
        started = time.perf_counter()
        tensors = list(params) + list(state_tensors) + list(counters)
        change = _flat(tensors).sub_(self.base).sub_(self.sent)
        flags = [stop_signum or 0, int(save_due), *self.cadence.measures(started)]
        flags = torch.tensor(flags, dtype=torch.float64)
        agreed = self._land()
        flush = at_end or (agreed is not None and bool(agreed[:2].any()))
        self._send(change, flags)
        if flush:
            maxima = self._land()
            agreed = maxima if agreed is None else torch.maximum(agreed, maxima)
            self.sent.zero_()
            combined = self.base
        else:
            self.sent = change
            combined = self.base + change
        _copy_into(tensors, combined)
        if any(t.is_cuda for t in tensors):
            # The copies are queued on this process's CUDA stream; the workers
            # run in other processes and streams, with nothing ordering them
            # after the copy. Wait for it before they are let go.
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        self.syncs += 1
        self.sync_seconds += seconds
        if agreed is None:  # nothing landed: the first sync after a flush
            self.cadence.agreed([UNKNOWN, UNKNOWN], seconds)
            return 0, False
        self.cadence.agreed(agreed[2:].tolist(), seconds)
        return int(agreed[0]), bool(agreed[1])

    def _send(self, change, flags):
        """Start summing CHANGE and taking the maximum of FLAGS over the nodes: in flight."""
        change = change.clone()  # summed in place, while this node goes on with CHANGE
        self.in_flight = _InFlight(
            change,
            flags,
            dist.all_reduce(change, group=self.sync_group, async_op=True),
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.sync_group, async_op=True),
        )

    def _land(self):
        """Wait for the sync in flight, if any, and add its sum to the base: the
        agreed flags, or None if none was in flight."""
        if self.in_flight is None:
            return None
        summed, maxima = self.in_flight.land()
        self.in_flight = None
        self.base.add_(summed.mul_(self.scale))
        return maxima

    @_collective("the end of an epoch")
    def sum_and_max(self, total, longest):
        """(sum of TOTAL over the nodes, max of LONGEST): an epoch's loss and seconds."""
        values = torch.tensor([total, longest], dtype=torch.float64)
        summed, maxed = values.clone(), values.clone()
        dist.all_reduce(summed, group=self.sync_group)
        dist.all_reduce(maxed, op=dist.ReduceOp.MAX, group=self.sync_group)
        return float(summed[0]), float(maxed[1])

    def shard(self, split):
        """This node's share of SPLIT (the test set): the nodes evaluate the
        same model, right after the epoch's last sync, each on its share."""
        start, end = (len(split) * r // self.world for r in (self.rank, self.rank + 1))
        return data.Split(split.images[start:end], split.labels[start:end])

    @_collective("the evaluation")
    def combine_evaluation(self, result, stop_signum):
        """(the whole test set's Evaluation, signum) from every node's RESULT on
        its shard: (None, the signal) if a signal stopped any node's."""
        classes = data.NUM_CLASSES
        confusion = result.confusion if result else torch.zeros(classes, classes, dtype=torch.int64)
        loss_sum = result.loss_sum() if result else 0.0
        # Counts up to 2**53 are exact in float64: one all_reduce for both.
        sums = torch.cat(
            [torch.tensor([loss_sum], dtype=torch.float64), confusion.flatten().double()]
        )
        flags = torch.tensor([stop_signum or 0, result is None], dtype=torch.float64)
        dist.all_reduce(sums, group=self.sync_group)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.sync_group)
        if flags[1]:
            return None, int(flags[0])
        combined = sums[1:].round().to(torch.int64).view(classes, classes)
        return Evaluation.from_sums(float(sums[0]), combined), int(flags[0])

    @_collective("the evaluation")
    def share_evaluation(self, row, stop_signum):
        """The leader makes the row; every node gets (row, signum): the leader's
        metrics row, or None and the signal that stopped it."""
        message = pickle.dumps((row, stop_signum or 0)) if self.leader else b""
        return pickle.loads(_broadcast_bytes(message, 0, self.rank, self.sync_group))

    @_collective("the agreement on a checkpoint")
    def newest_checkpoint(self, path, load, warn):
        """Every node's view of the newest checkpoint any node holds, loaded by
        LOAD, or None if no node has one. A node whose file is unreadable
        counts as holding none (it is moved aside, with a warning); the newest
        readable one wins, ties broken by the run identity stored in it; a node
        with an empty volume gets the file from the others. So losing any one
        node's disk loses nothing."""
        mine = self._readable(path, load, warn)
        key = None if mine is None else _progress_key(mine)
        everyone = _all_gather_objects(key, self.world)
        candidates = [(k, r) for r, k in enumerate(everyone) if k is not None]
        if not candidates:
            return None
        newest, owner = max(candidates, key=lambda c: (c[0], -c[1]))
        payload = b""
        if any(k != newest for k in everyone):
            payload = _file_bytes(path) if self.rank == owner else b""
            payload = _broadcast_bytes(payload, owner, self.rank)
        error = None
        if key != newest:
            try:
                mine = load(io.BytesIO(payload), f"node {owner}'s {path}")
            except CheckpointError as e:
                error = str(e)
        errors = _all_gather_objects(error, self.world)
        failed = [(r, e) for r, e in enumerate(errors) if e]
        if failed:
            rank, message = failed[0]
            raise ClusterError(f"node {rank} could not use the newest checkpoint: {message}")
        return mine

    @staticmethod
    def _readable(path, load, warn):
        if not os.path.exists(path):
            return None
        try:
            return load(path)
        except CheckpointError as e:
            aside = f"{path}.unreadable"
            try:
                os.replace(path, aside)
            except OSError:
                aside = None
            warn(f"{e}; counted as no checkpoint" + (f" and moved to {aside}" if aside else ""))
            return None


def _progress_key(state):
    """Order of checkpoints across nodes: global progress, then the run identity."""
    progress = state["epoch"] * state["batches_per_epoch"] + state["step"]
    return (progress, str(state.get("run_id", "")))


def _file_bytes(path):
    with open(path, "rb") as f:
        return f.read()
