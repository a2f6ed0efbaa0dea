"""Checkpoint file: a flat dict, written atomically, loaded without running
code, and checked field by field before anything trusts it.

Keys (FORMAT_VERSION 2):
    format_version    int, bumped on any incompatible change (1 still loads)
    model             str, the model class name ("Net")
    model_state       model.state_dict() (CPU tensors)
    optimizer_state   torch.optim's state_dict() format: SGD's momentum buffers,
                      or Adam's exp_avg, exp_avg_sq and step per parameter
    config            dict, the TrainConfig that defines the training
    options           dict, the RunOptions of the run that saved it (a record)
    run_id            str, made at a fresh start and kept by every resume: the
                      run's identity (several nodes break ties with it)
and the fields of Record, flat beside them:
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
    intervals         list of lists, one per --log-interval batches trained, of the
                      numbers named by INTERVAL_COLUMNS (the curves within epochs)

Version 1 kept the config in "args" (with the command-line flags) and had no
options or run_id; load() turns it into version 2 in memory.
"""

import errno
import io
import json
import math
import os
import re
import secrets
import socket
import stat
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields

import torch

from mnist_hogwild.training import beside
from mnist_hogwild.core.config import TrainConfig
from mnist_hogwild.core.errors import CheckpointError, one_line
from model import Net

FORMAT_VERSION = 2
SEED = TrainConfig.__dataclass_fields__["seed"].metadata["kind"]  # the --seed flag's range


def empty_partial():
    return {"loss_sum": 0.0, "seconds": 0.0}


@dataclass
class Record:
    """Where training stands: the part of the checkpoint besides the tensors."""

    epoch: int
    step: int
    batches_per_epoch: int
    seed: int
    metrics: list = field(default_factory=list)
    partial_epoch: dict = field(default_factory=empty_partial)
    intervals: list = field(default_factory=list)

    @classmethod
    def from_state(cls, state):
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})

    def next_batch(self, per_epoch):
        """The global batch training goes on from. Not divmod(batch, PER_EPOCH)
        later: a checkpoint saved while the last epoch's evaluation was
        interrupted holds step == PER_EPOCH, and that epoch must still be
        evaluated on resume."""
        return self.epoch * per_epoch + self.step


OPTIONAL_KEYS = ("partial_epoch", "options", "run_id", "intervals")
INTERVAL_COLUMNS = ("epoch", "batch", "samples", "train_loss", "lr", "samples_per_s", "staleness")
REQUIRED_KEYS = ("format_version", "model", "model_state", "optimizer_state", "config") + tuple(
    f.name for f in fields(Record) if f.name not in OPTIONAL_KEYS
)


def new_run_id():
    return secrets.token_hex(8)


def make_state(model, optimizer_state, progress, config, options, run_id):
    """The flat checkpoint dict (see the module docstring for its keys)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": type(model).__name__,
        "model_state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "optimizer_state": optimizer_state,
        "config": dict(config),
        "options": dict(options),
        "run_id": run_id,
        **asdict(progress),
    }


# ----- writing --------------------------------------------------------------
def host():
    # In temp names: nodes of a job that share a volume must not take each
    # other's temp files for stale ones (a container's hostname is its id).
    return socket.gethostname().replace("/", "_") or "host"


def temp_name(path, pid=None, token=None):
    """The temp file a save of PATH writes first: .NAME.HOST.PID.RANDOM.tmp, beside it."""
    pid = os.getpid() if pid is None else pid
    token = secrets.token_hex(4) if token is None else token
    return f".{os.path.basename(path)}.{host()}.{pid}.{token}.tmp"


def parse_temp_name(path, name):
    """(host, pid) of a temp file NAME of PATH's saves, or None if it is not one."""
    prefix = f".{os.path.basename(path)}."
    if not (name.startswith(prefix) and name.endswith(".tmp")):
        return None
    parts = name[len(prefix) : -len(".tmp")].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def atomic_write(path, write, replace=True):
    """Call write(file) on a temp file beside PATH, fsync it, then rename it over PATH.

    A crash at any instant leaves either the old file or the new one, never a
    mix. On failure (disk full, read-only volume) the temp file is removed,
    the old file is untouched, and OSError propagates. REPLACE=False: a PATH
    that exists is left as it is (FileExistsError), for files written once
    (the caller holds the checkpoint's lock, so nobody creates it meanwhile).
    """
    if not replace and os.path.exists(path):
        raise FileExistsError(errno.EEXIST, "exists", path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, temp_name(path))
    try:
        # O_EXCL with mode 0o666: the umask applies, as for any new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_directory(directory)  # so that the rename itself survives a power cut
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def fsync_directory(directory):
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def to_bytes(state):
    # Serialised in memory first (a few hundred KB): torch's zip writer reports
    # a full disk as a RuntimeError from C++, a plain write() as OSError ENOSPC.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer()


def save(state, path):
    """Write the checkpoint dict STATE to PATH atomically (see atomic_write)."""
    payload = to_bytes(state)
    try:
        atomic_write(path, lambda f: f.write(payload))
    except OSError as e:
        raise CheckpointError(
            f"could not write checkpoint {path}: {e.strerror or e}; "
            f"the previous checkpoint (if any) is unchanged"
        ) from None


def decided_by(row):
    """The accuracy of an epoch's metrics ROW that decisions use (the best
    model, --target-accuracy, the collapse checks, the history's names): the
    validation images', or the test set's where none were held out."""
    return row.get("validation_accuracy_percent", row["accuracy_percent"])


def decision_accuracy(state):
    """decided_by() of the checkpoint dict STATE's last evaluated epoch; 0 before any."""
    rows = state.get("metrics") or []
    return decided_by(rows[-1]) if rows else 0.0


METRICS_KEYS = ("epoch", "train_loss", "test_loss", "accuracy_percent")
OPTIONAL_METRICS = ("validation_loss", "validation_accuracy_percent", "samples")


def read_metrics(checkpoint_path, warn=None):
    """The run's epochs from the metrics file beside CHECKPOINT_PATH (written at
    every epoch of a run going on): dicts of METRICS_KEYS (and OPTIONAL_METRICS
    where present), other lines skipped; none if the file is missing. A line
    that is not even text (a damaged file) is skipped too, and WARN, if
    given, hears how many."""
    rows = []
    for row in _rows(checkpoint_path, warn):
        if row.get("kind", "epoch") == "epoch" and all(_number(row.get(k)) for k in METRICS_KEYS):
            extra = [k for k in OPTIONAL_METRICS if _number(row.get(k))]
            rows.append({k: row[k] for k in (*METRICS_KEYS, *extra)})
    return rows


def _rows(checkpoint_path, warn=None):
    """Every JSON object line of the metrics file."""
    try:
        with open(beside.metrics(checkpoint_path), "rb") as f:
            lines = [line for line in f if line.strip()]
    except OSError:
        return []
    rows, damaged = [], 0
    for line in lines:
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            damaged += 1
            continue
        except (ValueError, RecursionError):  # (not JSON, or nested past what json reads)
            continue
        if isinstance(row, dict):
            rows.append(row)
    if damaged and warn is not None:
        warn(
            f"{beside.metrics(checkpoint_path)}: skipped {damaged} damaged line(s) (not UTF-8 text)"
        )
    return rows


def metrics_lines(metrics, intervals):
    """The metrics file's rows, in order: each epoch's interval rows
    ("kind": "interval", INTERVAL_COLUMNS), then its row ("kind": "epoch")."""
    rows = []
    for row in metrics:
        within = [
            dict(zip(INTERVAL_COLUMNS, r, strict=True)) for r in intervals if r[0] == row["epoch"]
        ]
        rows += [{"kind": "interval", **r} for r in within] + [{"kind": "epoch", **row}]
    return rows


def read_intervals(checkpoint_path):
    """The interval rows of the metrics file (dicts of INTERVAL_COLUMNS)."""
    return [
        r
        for r in _rows(checkpoint_path)
        if r.get("kind") == "interval" and all(_number(r.get(k)) for k in INTERVAL_COLUMNS)
    ]


def write_metrics(checkpoint_path, metrics, intervals=()):
    """Rewrite the JSON-lines file beside the checkpoint from its lists, atomically:
    it then always agrees with the checkpoint, even after a crash between the two."""
    path = beside.metrics(checkpoint_path)
    lines = "".join(json.dumps(row) + "\n" for row in metrics_lines(metrics, intervals)).encode()
    try:
        atomic_write(path, lambda f: f.write(lines))
    except OSError as e:
        raise CheckpointError(f"could not write {path}: {e.strerror or e}") from None


# ----- reading --------------------------------------------------------------
def _reason(error):
    """The informative line of a torch.load error (its messages span many lines)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif "Weights only load failed" in text:
        text = text.split("trusted source.", 1)[-1]
    # torch's messages go on with advice after the first sentence; keep the fact.
    reason = one_line(text or type(error).__name__, 200).split(". ")[0]
    if not re.search(r"[A-Za-z]{3}", reason):  # a bare key or code, such as () or 101
        reason = f"{type(error).__name__} {reason}".strip()
    return reason


def load(source, model_state, name=None):
    """Load and validate a checkpoint from SOURCE (a path or a binary file)
    against the expected MODEL_STATE; NAME names it in errors.

    weights_only=True: a checkpoint is data, and must not be able to run code.
    The zip's CRCs are checked first: torch.load itself does not, and a
    flipped bit in a stored weight would load without complaint."""
    name = name or str(source)
    if isinstance(source, (str, os.PathLike)):
        source = io.BytesIO(read_file(source, name))
    check_crc(source, name)
    try:
        with warnings.catch_warnings():  # (bytes that are no checkpoint: the error says so)
            warnings.simplefilter("ignore")
            state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - bytes that fail to parse, in any way, are no checkpoint
        reason = _reason(e)
        if "GLOBAL" in reason:
            raise CheckpointError(
                f"{name} refused: it is not plain tensors and data ({reason}), "
                f"a pickle that could run code"
            ) from None
        raise CheckpointError(f"{name} is not a readable checkpoint ({reason})") from None
    return validate(upgrade(state, name), model_state, name)


# No checkpoint of this Net comes near this: a bigger file (or a device that
# never ends, behind a link) is refused before it is read.
MAX_BYTES = 256 << 20


def read_file(path, name=None, limit=MAX_BYTES):
    """The bytes of the regular file PATH, read only if it is one and holds at
    most LIMIT bytes; CheckpointError (one line) otherwise. A link is followed
    (a user's name for a file), but what it names must be a regular file."""
    name = name or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {name}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        found = os.fstat(f.fileno())
        if not stat.S_ISREG(found.st_mode):
            raise CheckpointError(f"{name} is not a regular file")
        if found.st_size > limit:
            raise CheckpointError(f"{name} is {found.st_size} bytes, more than a checkpoint holds")
        try:
            payload = f.read(limit + 1)
        except OSError as e:
            raise CheckpointError(f"cannot read checkpoint {name}: {e.strerror or e}") from None
    if len(payload) > limit:
        raise CheckpointError(f"{name} grew past {limit} bytes while it was read")
    return payload


def check_crc(f, name):
    try:
        with zipfile.ZipFile(f) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        bad = None  # not a zip at all: torch.load says what it is
    f.seek(0)
    if bad is not None:
        raise CheckpointError(f"{name} is damaged: {bad} fails its CRC check")


def upgrade(state, name):
    """STATE in the current format (version 1 is converted in memory)."""
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{name} is not a mnist-hogwild checkpoint (no format_version)")
    version = state["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{name} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{name} has format version {version}, newer than this program reads "
            f"({FORMAT_VERSION}); use a newer mnist-hogwild"
        )
    if version == 1 and "config" not in state and "args" in state:
        flags_v1 = state["args"]  # version 1 saved the command line's flags there
        if not isinstance(flags_v1, dict):
            kind = type(flags_v1).__name__
            raise CheckpointError(f"{name} is damaged: args is a {kind}, not a dict")
        names = set(TrainConfig.names())
        state = {**state, "config": {k: v for k, v in flags_v1.items() if k in names}}
    if version == 1 and isinstance(state.get("metrics"), list):
        state["metrics"] = [_percent_row(row) for row in state["metrics"]]
    return state


def _percent_row(row):
    """Version 1's metrics rows held the accuracy as a fraction ("accuracy")."""
    if isinstance(row, dict) and "accuracy_percent" not in row and _number(row.get("accuracy")):
        row = {**row, "accuracy_percent": 100 * row["accuracy"]}
        del row["accuracy"]
    return row


def _number(value, integer=False):
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check(condition, name, message):
    if not condition:
        raise CheckpointError(f"{name} is damaged: {message}")


def validate(state, model_state, name):
    """Every field's type and range, so that nothing downstream can crash on it
    or train nonsense; CheckpointError names the first field that is wrong."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{name} is incomplete: missing {', '.join(missing)}")
    _validate_model(state, model_state, name)
    return _validate_progress(state, name)


def _validate_model(state, model_state, name):
    saved = state["model_state"]
    _check(isinstance(saved, dict), name, "model_state is not a dict")
    difference = network_difference(saved, model_state)
    if difference:
        raise CheckpointError(
            f"{name} holds another network than this model.py's Net ({difference}): use the "
            f"model.py it was trained with (an image runs the copy it was built with: rebuild "
            f"it after editing model.py, or run python /workspace/train.py on the mounted one)"
        )
    odd = [k for k, t in saved.items() if t.layout != torch.strided or not t.is_floating_point()]
    _check(not odd, name, f"weights {', '.join(odd)} are not dense floating-point tensors")
    bad = [k for k, t in saved.items() if not bool(t.isfinite().all())]
    _check(not bad, name, f"weights {', '.join(bad)} are not finite (a diverged run?)")


def network_difference(saved, expected):
    """The first way the weights SAVED differ in shape from EXPECTED (a
    state_dict), both shapes named; "" if they match."""
    for key, tensor in expected.items():
        if key not in saved:
            return f"it has no {key}, this Net's is {_shape(tensor)}"
        if not isinstance(saved[key], torch.Tensor):
            return f"its {key} is a {type(saved[key]).__name__}, not a tensor"
        if saved[key].shape != tensor.shape:
            return f"its {key} is {_shape(saved[key])}, this Net's {_shape(tensor)}"
    extra = sorted(set(saved) - set(expected))
    return f"it has {extra[0]}, which this Net lacks" if extra else ""


def _shape(tensor):
    return "x".join(map(str, tensor.shape)) or "a scalar"


def _validate_progress(state, name):
    config = state["config"]
    _check(isinstance(config, dict), name, f"config is a {type(config).__name__}, not a dict")
    for key, value, expected in TrainConfig.invalid(config):
        raise CheckpointError(f"{name} is damaged: config {key} is {value!r}, expected {expected}")
    per_epoch, epoch, step = state["batches_per_epoch"], state["epoch"], state["step"]
    _check(_number(per_epoch, True) and per_epoch > 0, name, f"batches_per_epoch {per_epoch!r}")
    _check(_number(epoch, True) and epoch >= 0, name, f"epoch {epoch!r} is not a count")
    if _number(config.get("epochs"), True):
        _check(epoch <= config["epochs"], name, f"epoch {epoch} is past its {config['epochs']}")
    _check(_number(step, True) and 0 <= step <= per_epoch, name, f"step {step!r} is impossible")
    _check(SEED.accepts(state["seed"]), name, "seed out of range")
    metrics = state["metrics"]
    _check(
        isinstance(metrics, list) and all(isinstance(m, dict) for m in metrics),
        name,
        "metrics is not a list of rows",
    )
    for row in metrics:
        _check(_number(row.get("accuracy_percent")), name, "a metrics row has no accuracy_percent")
    partial = state.get("partial_epoch", empty_partial())
    _check(
        isinstance(partial, dict) and all(_number(partial.get(k)) for k in ("loss_sum", "seconds")),
        name,
        "partial_epoch lacks its loss_sum and seconds",
    )
    optimizer = state["optimizer_state"]
    _check(
        isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict),
        name,
        "optimizer_state is not an optimizer state dict",
    )
    _check(all(map(dense, optimizer["state"].values())), name, "optimizer_state is not dense")
    _check(isinstance(state.get("run_id", ""), str), name, "run_id is not a string")
    intervals = state.get("intervals", [])
    _check(
        isinstance(intervals, list)
        and all(
            isinstance(r, list) and len(r) == len(INTERVAL_COLUMNS) and all(map(_number, r))
            for r in intervals
        ),
        name,
        f"intervals is not a list of rows of {len(INTERVAL_COLUMNS)} numbers",
    )
    return {**state, "partial_epoch": partial, "options": state.get("options") or {}}


def dense(per_parameter):
    """Whether an optimizer's state of one parameter holds only dense tensors
    (a sparse one would fail deep inside the optimizer's step)."""
    values = per_parameter.values() if isinstance(per_parameter, dict) else ()
    return all(v.layout == torch.strided for v in values if isinstance(v, torch.Tensor))


def load_model(source, name=None):
    """(Net with the checkpoint's weights, on the CPU, in eval mode; the state
    dict): what evaluate, infer and export need from a checkpoint."""
    net = Net()
    state = load(source, net.state_dict(), name)
    net.load_state_dict(state["model_state"])
    return net.eval(), state
