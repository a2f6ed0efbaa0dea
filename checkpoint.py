"""Checkpoint file: a flat dict, written atomically, loaded without running code.

Keys (FORMAT_VERSION 1):
    format_version    int, bumped on any incompatible change
    model             str, the model class name ("Net")
    model_state       model.state_dict()
    optimizer_state   optimizer.state_dict() (SGD, holds the momentum buffers)
    args              dict, the command-line arguments and the resolved TrainConfig
                      of the run that saved it
and the fields of Progress, flat beside them:
    epoch             int, epochs fully trained *and* evaluated
    step              int, batches of epoch `epoch + 1` already trained
                      (equal to the batches per epoch when the training of that
                      epoch finished but its evaluation was interrupted)
    batches_per_epoch int, for checking `step` on resume
    seed              int
    metrics           list of dicts, one per evaluated epoch (see README)
    partial_epoch     dict {"loss_sum", "seconds"}: the training loss summed and
                      the seconds spent so far in the unfinished epoch, so that a
                      resumed epoch reports the same metrics as an uninterrupted one

The metrics also go to a JSON-lines file beside the checkpoint (metrics_path),
rewritten from the same list after every save.
"""

import glob
import io
import json
import os
import pickle
import secrets
import socket
from dataclasses import asdict, dataclass, field, fields

import torch

FORMAT_VERSION = 1


def empty_partial():
    return {"loss_sum": 0.0, "seconds": 0.0}


@dataclass
class Progress:
    """Where training stands: the part of the checkpoint besides the tensors."""

    epoch: int
    step: int
    batches_per_epoch: int
    seed: int
    metrics: list = field(default_factory=list)
    # Optional on load: checkpoints from before it existed resume with zeros.
    partial_epoch: dict = field(default_factory=empty_partial)

    @classmethod
    def from_state(cls, state):
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


OPTIONAL_KEYS = ("partial_epoch",)
REQUIRED_KEYS = ("format_version", "model", "model_state", "optimizer_state", "args") + tuple(
    f.name for f in fields(Progress) if f.name not in OPTIONAL_KEYS
)


def make_state(model, optimizer_state, progress, args):
    """The flat checkpoint dict (see the module docstring for its keys)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": type(model).__name__,
        "model_state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "optimizer_state": optimizer_state,
        "args": dict(args),
        **asdict(progress),
    }


class CheckpointError(Exception):
    """The checkpoint cannot be read, written or used (one-line message)."""


def _temp_prefix(path):
    return "." + os.path.basename(path) + "."


def _host():
    # In temp names: nodes of a job that share a volume must not take each
    # other's temp files for stale ones (a container's hostname is its id).
    return socket.gethostname().replace("/", "_") or "host"


def atomic_write(path, write):
    """Call write(file) on a temp file beside PATH, fsync it, then rename it over PATH.

    A crash at any instant leaves either the old file or the new one, never a
    mix. On failure (disk full, read-only volume) the temp file is removed,
    the old file is untouched, and OSError propagates.
    """
    directory = os.path.dirname(os.path.abspath(path))
    name = f"{_temp_prefix(path)}{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp = os.path.join(directory, name)
    try:
        # O_EXCL with mode 0o666: the umask applies, as for any new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        # fsync the directory too, so the rename itself survives a power cut.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def save(state, path):
    """Write the checkpoint dict STATE to PATH atomically (see atomic_write)."""
    # Serialise in memory first (about 180 KB): torch's zip writer reports a
    # full disk as a RuntimeError from C++, a plain write() as OSError ENOSPC.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    except OSError as e:
        raise CheckpointError(
            f"could not write checkpoint {path}: {e.strerror or e}; "
            f"the previous checkpoint (if any) is unchanged"
        ) from None


def metrics_path(checkpoint_path):
    return os.path.splitext(checkpoint_path)[0] + ".metrics.jsonl"


def write_metrics(checkpoint_path, metrics):
    """Rewrite the JSON-lines file beside the checkpoint from its list, atomically:
    it then always agrees with the checkpoint, even after a crash between the two."""
    path = metrics_path(checkpoint_path)
    lines = "".join(json.dumps(row) + "\n" for row in metrics).encode()
    try:
        atomic_write(path, lambda f: f.write(lines))
    except OSError as e:
        raise CheckpointError(f"could not write {path}: {e.strerror or e}") from None


def check_writable(path):
    """Fail fast, before any training, if the checkpoint cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f"{_temp_prefix(path)}{os.getpid()}.probe.tmp")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(
            f"cannot write checkpoints to {directory}: {e.strerror or e} "
            f"(uid {os.getuid()}); mount a writable volume or pass --checkpoint"
        ) from None
    if os.path.isdir(path):
        raise CheckpointError(f"--checkpoint {path} is a directory")


def remove_stale_temps(path, this_host_only=False):
    """Remove temp files left by a save that was killed (SIGKILL mid-write).

    THIS_HOST_ONLY: on several machines sharing the checkpoint's volume, only
    this host's (another node may be writing its own right now)."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path) + (f"{_host()}." if this_host_only else "")
    stale = glob.glob(os.path.join(directory, glob.escape(prefix) + "*.tmp"))
    for name in stale:
        os.unlink(name)
    return stale


def _reason(error):
    """The informative line of a torch.load error (its messages span many lines)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif "Weights only load failed" in text:
        text = text.split("trusted source.", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    # torch's messages go on with advice after the first sentence; keep the fact.
    return first.split(". ")[0].rstrip(".")[:200]


def load(path, model_state):
    """Load and validate the checkpoint at PATH against the expected MODEL_STATE.

    weights_only=True: a checkpoint is data, and must not be able to run code.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    with f:
        return _load(f, path, model_state)


def load_bytes(payload, path, model_state):
    """load() of a checkpoint file's bytes (another node's, say); PATH names it in errors."""
    return _load(io.BytesIO(payload), path, model_state)


def _load(f, path, model_state):
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        reason = _reason(e)
        if "GLOBAL" in reason:
            raise CheckpointError(
                f"{path} refused: it is not plain tensors and data ({reason}), "
                f"a pickle that could run code"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason})") from None

    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is not a mnist-hogwild checkpoint (no format_version)")
    version = state["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, newer than this program reads "
            f"({FORMAT_VERSION}); use a newer mnist-hogwild"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)}")
    saved = state["model_state"]
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} has no model state dict")
    if set(saved) != set(model_state) or any(
        not isinstance(saved[k], torch.Tensor) or saved[k].shape != model_state[k].shape
        for k in model_state
    ):
        raise CheckpointError(
            f"{path} is from a different model ({state.get('model')!r}): its weights do "
            f"not match this Net's layers"
        )
    return state
