"""What the nodes agree on before training: that they run the same job, and
which checkpoint to resume from (the newest any node holds, sent to those
whose disk lacks it). Plain functions of (rank, world) over gloo."""

import io
import json
import os

from mnist_hogwild.cluster.wire import all_gather_objects, broadcast_bytes
from mnist_hogwild.core.errors import CheckpointError, ClusterError, UsageError


def same_job(settings, stop_signum, world):
    """Stop with one line, on every node, if the nodes' SETTINGS (a dict of
    what must match) differ: naming the setting and the nodes. A UsageError
    (exit 2), as a flag that differs from the checkpoint's is: a retry with
    the same flags fails the same way, so an orchestrator should not retry it
    (docs/kubernetes.yaml fails the Job on 2). Also the first chance to stop
    together: the signal any node got during its start-up (or 0)."""
    everyone = all_gather_objects((settings, stop_signum or 0), world)
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


def newest_checkpoint(path, load, warn, rank, world):
    """Every node's view of the newest checkpoint any node holds, loaded by
    LOAD, or None if no node has one. A node whose file is unreadable counts
    as holding none (it is moved aside, with a warning); the newest readable
    one wins, ties broken by the run identity stored in it; a node with an
    empty volume gets the file from the others. So losing any one node's
    disk loses nothing."""
    mine = readable(path, load, warn)
    key = None if mine is None else progress_key(mine)
    everyone = all_gather_objects(key, world)
    candidates = [(k, r) for r, k in enumerate(everyone) if k is not None]
    if not candidates:
        return None
    newest, owner = max(candidates, key=lambda c: (c[0], -c[1]))
    payload = b""
    if any(k != newest for k in everyone):
        payload = file_bytes(path) if rank == owner else b""
        payload = broadcast_bytes(payload, owner, rank)
    error = None
    if key != newest:
        try:
            mine = load(io.BytesIO(payload), f"node {owner}'s {path}")
        except CheckpointError as e:
            error = str(e)
    errors = all_gather_objects(error, world)
    failed = [(r, e) for r, e in enumerate(errors) if e]
    if failed:
        rank, message = failed[0]
        raise ClusterError(f"node {rank} could not use the newest checkpoint: {message}")
    return mine


def readable(path, load, warn):
    """The checkpoint at PATH loaded, or None (missing, or unreadable: moved aside)."""
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


def progress_key(state):
    """Order of checkpoints across nodes: global progress, then the run identity."""
    progress = state["epoch"] * state["batches_per_epoch"] + state["step"]
    return (progress, str(state.get("run_id", "")))


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()
