"""What the nodes agree on before training: that they run the same job, which
node writes the checkpoint in a folder several share, and which checkpoint
to resume from (the newest any node holds, sent to those whose disk lacks
it). Plain functions of (rank, world) over gloo."""

import io
import json
import os
import secrets

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


def checkpoint_writer(path, rank, world):
    """The node that writes checkpoint PATH for this one: the lowest rank whose
    PATH is the same file as this node's (a shared folder: an NFS home, a
    ReadWriteMany volume), else this node itself. The nodes' checkpoints are
    bitwise the same at every save, so one file serves all that share it.

    Found out, not configured: each node leaves a marker named by a token new
    to this job beside PATH, and reports which nodes' markers it sees. A name
    never looked up before is not in any client's cache, so a shared folder
    shows every marker at once, NFS included."""
    token = all_gather_objects(secrets.token_hex(8) if rank == 0 else None, world)[0]
    directory = os.path.dirname(os.path.abspath(path))

    def marker(r):
        return os.path.join(directory, f".{os.path.basename(path)}.{token}.node{r}")

    try:
        os.makedirs(directory, exist_ok=True)
        with open(marker(rank), "w"):
            pass
    except OSError:
        pass  # an unwritable folder is this node's own to report (the checkpoint manager)
    all_gather_objects(None, world)  # every node has left its marker
    seen = [r for r in range(world) if os.path.exists(marker(r))]
    all_gather_objects(None, world)  # every node has looked
    try:
        os.unlink(marker(rank))
    except OSError:
        pass
    return min(seen, default=rank) if rank in seen else rank


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
