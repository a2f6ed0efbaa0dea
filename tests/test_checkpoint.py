import errno
import os
import subprocess
import sys
import zipfile

import pytest
import torch

from mnist_hogwild.training import checkpoint
from mnist_hogwild.core import processes
from helpers import BAD_CHECKPOINTS, fail_writes_with, valid_state, wrapped_fdopen
from model import Net


def expected():
    return Net().state_dict()


def test_round_trip(tmp_path):
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    assert checkpoint.load(path, expected())["epoch"] == 1
    assert [p for p in os.listdir(tmp_path)] == ["ck.pth"]


@pytest.mark.parametrize(
    "make, message",
    [(m, msg) for _, m, msg in BAD_CHECKPOINTS],
    ids=[i for i, *_ in BAD_CHECKPOINTS],
)
def test_bad_checkpoints_are_refused_with_one_line(tmp_path, make, message):
    path = str(tmp_path / "ck.pth")
    make(path)
    before = open(path, "rb").read()
    with pytest.raises(checkpoint.CheckpointError, match=message) as err:
        checkpoint.load(path, expected())
    assert "\n" not in str(err.value)
    assert open(path, "rb").read() == before


def test_truncated_checkpoint_is_refused(tmp_path):
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    payload = open(path, "rb").read()
    open(path, "wb").write(payload[: len(payload) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(path, expected())


def test_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    before = open(path, "rb").read()
    full = fail_writes_with(OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(checkpoint.os, "fdopen", wrapped_fdopen(full))
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device"):
        checkpoint.save(valid_state(), path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["ck.pth"]


@pytest.mark.slow
def test_process_killed_mid_save_leaves_the_old_file(tmp_path):
    """A real SIGKILL halfway through writing the temp file: the old checkpoint survives."""
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    before = open(path, "rb").read()
    script = (
        "import torch, helpers\n"
        "from mnist_hogwild.training import checkpoint\n"
        "checkpoint.os.fdopen = helpers.wrapped_fdopen(helpers.die_halfway)\n"
        f"checkpoint.save({{'x': torch.zeros(3)}}, {path!r})\n"
    )
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env)
    assert proc.returncode == -9, proc.stderr
    assert open(path, "rb").read() == before
    temps = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(temps) == 1
    owner = checkpoint.parse_temp_name(path, temps[0])
    assert owner == (checkpoint.host(), owner[1]) and not processes.pid_alive(owner[1])


def flip_a_byte_in_a_weight(path):
    """Change one byte inside the stored fc2 weights (not the zip's structure)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 1000)
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
    payload = bytearray(open(path, "rb").read())
    payload[offset] ^= 0x40
    open(path, "wb").write(bytes(payload))


def nan_lr(state):
    state["config"]["lr"] = float("nan")
    return state


DAMAGED = [
    ("epoch-as-text", lambda s: {**s, "epoch": "3"}, "epoch '3' is not a count"),
    ("negative-epoch", lambda s: {**s, "epoch": -3}, "epoch -3 is not a count"),
    ("epoch-past-the-end", lambda s: {**s, "epoch": 11}, "past its 10"),
    ("step-too-big", lambda s: {**s, "step": 11}, "step 11 is impossible"),
    ("config-as-list", lambda s: {**s, "config": [1, 2]}, "config is a list"),
    (
        "batch-size-0",
        lambda s: {**s, "config": {**s["config"], "batch_size": 0}},
        "batch_size is 0",
    ),
    ("lr-nan", nan_lr, "config lr is nan"),
    ("metrics-as-int", lambda s: {**s, "metrics": 3}, "metrics is not a list"),
    ("partial-without-keys", lambda s: {**s, "partial_epoch": {}}, "partial_epoch lacks"),
    ("seed-huge", lambda s: {**s, "seed": 2**70}, "seed out of range"),
    (
        "nan-weights",
        lambda s: {**s, "model_state": {k: v * float("nan") for k, v in s["model_state"].items()}},
        "not finite",
    ),
]


@pytest.mark.parametrize("damage, message", [d[1:] for d in DAMAGED], ids=[d[0] for d in DAMAGED])
def test_damaged_fields_are_refused_with_one_line_naming_them(tmp_path, damage, message):
    path = str(tmp_path / "ck.pth")
    torch.save(damage(valid_state()), path)
    with pytest.raises(checkpoint.CheckpointError, match=message) as err:
        checkpoint.load(path, expected())
    assert "\n" not in str(err.value)


def test_a_flipped_bit_in_a_stored_weight_fails_the_crc_check(tmp_path):
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    flip_a_byte_in_a_weight(path)
    with pytest.raises(checkpoint.CheckpointError, match="fails its CRC check"):
        checkpoint.load(path, expected())


def test_a_fifo_is_refused_without_opening_it(tmp_path):
    path = tmp_path / "ck.pth"
    os.mkfifo(path)
    with pytest.raises(checkpoint.CheckpointError, match="not a regular file"):
        checkpoint.load(str(path), expected())


def test_a_version_1_checkpoint_still_loads(tmp_path):
    state = valid_state()
    old = {k: v for k, v in state.items() if k not in ("config", "options", "run_id")}
    old.update(format_version=1, args={**state["config"], "num_processes": 2, "optimizer": "sgd"})
    old["metrics"] = [{"epoch": 1, "accuracy": 0.9712}]
    path = str(tmp_path / "v1.pth")
    torch.save(old, path)
    loaded = checkpoint.load(path, expected())
    assert loaded["config"]["batch_size"] == 64 and "num_processes" not in loaded["config"]
    assert loaded["metrics"][0]["accuracy_percent"] == pytest.approx(97.12)


def test_a_checkpoint_of_an_edited_network_names_both_shapes_and_the_way_out(tmp_path):
    """model.py edited (a wider first layer), then a command run with the old one."""
    wider = Net()
    wider.conv1 = torch.nn.Conv2d(1, 32, kernel_size=5)
    path = str(tmp_path / "wide.pth")
    checkpoint.save(valid_state(model_state=wider.state_dict()), path)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(path, expected())
    message = str(err.value)
    assert "its conv1.weight is 32x1x5x5, this Net's 10x1x5x5" in message
    assert "rebuild it after editing model.py" in message and "/workspace/train.py" in message
