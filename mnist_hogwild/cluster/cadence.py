"""How often the nodes sync (--sync-every): a fixed K, or auto, adapted to
what a sync costs; and the K measured safe for accuracy at each node count,
which auto never passes and a fixed K is warned beyond."""

import math
import time

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

    def describe(self, me):
        """The start line's account of the cadence, for node ME."""
        if self.auto and self.least < self.most:
            return (
                f"{me}: syncing every {self.k} batches, then as often as keeps the syncs near "
                f"{100 * SYNC_SHARE:g}% of the time (every {self.least} to {self.most} "
                f"batches; --sync-every auto)"
            )
        if self.auto:
            return (
                f"{me}: syncing every {self.k} batches (--sync-every auto: the most measured "
                f"safe for accuracy at this node count)"
            )
        return f"{me}: syncing every {self.k} batches"

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
