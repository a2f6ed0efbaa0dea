"""Choosing the device, and checkpoints that load on either device, in process.
The tests marked cuda need a GPU and are skipped without one."""

import os
import subprocess
import sys

import pytest
import torch

from mnist_hogwild.training import checkpoint
import main
from mnist_hogwild.learn import optimizers
from mnist_hogwild.learn import device
from mnist_hogwild.core.config import TrainConfig
from mnist_hogwild.core.errors import UsageError
from helpers import valid_state
from model import Net

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def fake_gpu(monkeypatch, available, cuda_version="13.0"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    monkeypatch.setattr(torch.version, "cuda", cuda_version)


def test_device_flags_default_to_auto_and_cuda_is_the_samples_spelling():
    assert main.build_parser().parse_args([]).device == "auto"
    assert main.build_parser().parse_args(["--cuda"]).device == "cuda"
    assert main.build_parser().parse_args(["--device", "cpu"]).device == "cpu"


def test_auto_picks_the_gpu_when_torch_sees_one(monkeypatch):
    fake_gpu(monkeypatch, available=True)
    chosen, why = device.choose_device("auto")
    assert chosen == torch.device("cuda", 0) and "Fake GPU" in why


def test_auto_falls_back_to_the_cpu_and_says_why(monkeypatch):
    fake_gpu(monkeypatch, available=False, cuda_version=None)
    chosen, why = device.choose_device("auto")
    assert chosen.type == "cpu" and "CPU-only build" in why
    fake_gpu(monkeypatch, available=False, cuda_version="13.0")
    assert "--gpus all" in device.choose_device("auto")[1]


@pytest.mark.parametrize("cuda_version", [None, "13.0"])
def test_cuda_without_a_gpu_is_a_usage_error(monkeypatch, cuda_version):
    fake_gpu(monkeypatch, available=False, cuda_version=cuda_version)
    with pytest.raises(UsageError, match="--device cuda: no usable GPU"):
        device.choose_device("cuda")


def test_cpu_is_always_the_cpu(monkeypatch):
    fake_gpu(monkeypatch, available=True)
    assert device.choose_device("cpu")[0].type == "cpu"


def snapshot_of(model):
    params = list(model.parameters())
    opt = optimizers.MomentumSGD(
        params, 0.01, 0.5, optimizers.optimizer_class("sgd").new_state(params)
    )
    progress = checkpoint.Record(epoch=0, step=3, batches_per_epoch=10, seed=1)
    state = checkpoint.make_state(
        model, opt.state_dict(), progress, TrainConfig().as_dict(), {}, "r"
    )
    return opt, state


def test_checkpoint_tensors_are_copies_not_the_live_shared_weights():
    # The workers go on training while a periodic save writes the snapshot.
    model = Net()
    opt, state = snapshot_of(model)
    live = {p.data_ptr() for p in model.parameters()} | {t.data_ptr() for t in opt.tensors()}
    tensors = list(state["model_state"].values())
    tensors += [s["momentum_buffer"] for s in state["optimizer_state"]["state"].values()]
    assert not live & {t.data_ptr() for t in tensors}


def test_a_checkpoint_saved_from_a_gpu_loads_on_a_cpu_only_machine(tmp_path):
    """Its tensors are tagged cuda:0 (made in a child process that tags them so
    with torch's own serialization hook); torch.load alone refuses it here."""
    path = tmp_path / "gpu.pth"
    script = (
        "import sys, torch\n"
        "from torch import serialization\n"
        "serialization.register_package(-100, lambda obj: 'cuda:0', lambda obj, loc: None)\n"
        "sys.path.insert(0, sys.argv[2]); sys.path.insert(0, sys.argv[3])\n"
        "import helpers\n"
        "torch.manual_seed(0)\n"
        "torch.save(helpers.valid_state(), sys.argv[1])\n"
    )
    tests = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, "-c", script, path, os.path.dirname(tests), tests], check=True)
    assert b"cuda:0" in path.read_bytes()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    state = checkpoint.load(str(path), Net().state_dict())
    assert all(t.device.type == "cpu" for t in state["model_state"].values())
    torch.manual_seed(0)
    expected = valid_state()["model_state"]
    assert all(torch.equal(state["model_state"][k], expected[k]) for k in expected)


@pytest.mark.cuda
@needs_gpu
def test_gpu_checkpoint_holds_cpu_copies_and_loads_on_the_cpu(tmp_path):
    model = Net().cuda()
    opt, state = snapshot_of(model)
    tensors = list(state["model_state"].values())
    tensors += [s["momentum_buffer"] for s in state["optimizer_state"]["state"].values()]
    assert all(t.device.type == "cpu" for t in tensors)
    path = str(tmp_path / "ck.pth")
    checkpoint.save(state, path)
    loaded = checkpoint.load(path, Net().state_dict())
    cpu_model = Net()
    cpu_model.load_state_dict(loaded["model_state"])
    for a, b in zip(cpu_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b.cpu())


def test_expandable_segments_are_turned_off_for_the_shared_tensors_only():
    env = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64, expandable_segments:True"}
    assert device.shareable_cuda_allocations(env)
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:64,expandable_segments:False"
    assert not device.shareable_cuda_allocations(
        {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64"}
    )
    assert not device.shareable_cuda_allocations({})
