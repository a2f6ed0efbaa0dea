"""Choosing the device, and checkpoints that load on either device, in process.
The tests marked cuda need a GPU and are skipped without one."""

import pytest
import torch

import checkpoint
import hogwild
import main
import train
from config import UsageError
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
    device, why = hogwild.choose_device("auto")
    assert device == torch.device("cuda", 0) and "Fake GPU" in why


def test_auto_falls_back_to_the_cpu_and_says_why(monkeypatch):
    fake_gpu(monkeypatch, available=False, cuda_version=None)
    device, why = hogwild.choose_device("auto")
    assert device.type == "cpu" and "CPU-only build" in why
    fake_gpu(monkeypatch, available=False, cuda_version="13.0")
    assert "--gpus all" in hogwild.choose_device("auto")[1]


@pytest.mark.parametrize("cuda_version", [None, "13.0"])
def test_cuda_without_a_gpu_is_a_usage_error(monkeypatch, cuda_version):
    fake_gpu(monkeypatch, available=False, cuda_version=cuda_version)
    with pytest.raises(UsageError, match="--device cuda: no usable GPU"):
        hogwild.choose_device("cuda")


def test_cpu_is_always_the_cpu(monkeypatch):
    fake_gpu(monkeypatch, available=True)
    assert hogwild.choose_device("cpu")[0].type == "cpu"


def test_checkpoint_tensors_are_cpu_tensors_whatever_the_model_device():
    # A GPU run's model and momentum are CUDA tensors; make_state and
    # MomentumSGD.state_dict move them to the CPU (here they start there).
    model = Net()
    optimizer = train.MomentumSGD(model.parameters(), 0.01, 0.5)
    progress = checkpoint.Progress(epoch=0, step=3, batches_per_epoch=10, seed=1)
    state = checkpoint.make_state(model, optimizer.state_dict(), progress, {})
    tensors = list(state["model_state"].values())
    tensors += [s["momentum_buffer"] for s in state["optimizer_state"]["state"].values()]
    assert all(t.device.type == "cpu" for t in tensors)
    # The copies are not the live weights: the workers may go on training.
    live = {p.data_ptr() for p in model.parameters()} | {
        b.data_ptr() for b in optimizer.momentum_buffers
    }
    assert not live & {t.data_ptr() for t in tensors}


def test_load_maps_every_tensor_to_the_cpu(tmp_path, monkeypatch):
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    checkpoint.load(path, Net().state_dict())
    assert seen["map_location"] == "cpu" and seen["weights_only"] is True


@pytest.mark.cuda
@needs_gpu
def test_gpu_checkpoint_loads_on_the_cpu(tmp_path):
    model = Net().cuda()
    optimizer = train.MomentumSGD(model.parameters(), 0.01, 0.5)
    progress = checkpoint.Progress(epoch=1, step=0, batches_per_epoch=10, seed=1)
    path = str(tmp_path / "ck.pth")
    checkpoint.save(checkpoint.make_state(model, optimizer.state_dict(), progress, {}), path)
    state = checkpoint.load(path, Net().state_dict())
    cpu_model = Net()
    cpu_model.load_state_dict(state["model_state"])
    for a, b in zip(cpu_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b.cpu())
