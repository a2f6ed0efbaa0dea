"""Where the model trains: the torch device for --device, and the CUDA
allocator setting that sharing the model with the workers needs."""

import os

import torch

from mnist_hogwild.core.errors import UsageError


def choose_device(requested, note=print):
    """(torch.device, why) for --device REQUESTED ("auto", "cpu" or "cuda").

    The model, its optimizer state and both data splits live on this device;
    the checkpoint always holds CPU tensors. UsageError (exit 2, nothing
    written) if "cuda" is asked for without a GPU. NOTE says what changed."""
    if requested == "cpu":
        return torch.device("cpu"), "--device cpu"
    if shareable_cuda_allocations():
        note(
            "note: PYTORCH_CUDA_ALLOC_CONF asks for expandable segments; the shared model is "
            "allocated without them (their CUDA IPC needs pidfd_getfd, which containers "
            "without ptrace rights refuse); the workers keep them"
        )
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return torch.device("cuda", 0), f"{name}; --device {requested}"
    if torch.version.cuda is None:
        why = "this torch is a CPU-only build; the CUDA image has a CUDA build"
    else:
        why = "torch sees no GPU (no NVIDIA driver, or docker run without --gpus all)"
    if requested == "cuda":
        raise UsageError(f"--device cuda: no usable GPU: {why}")
    return torch.device("cpu"), f"auto: {why}"


def shareable_cuda_allocations(environ=os.environ):
    """Turn expandable segments off for this process's CUDA allocations (read
    when CUDA starts, so call this before): the tensors it shares with the
    workers must go through classic CUDA IPC handles. True if it changed."""
    changed = False
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        parts = [p.strip() for p in environ.get(name, "").split(",") if p.strip()]
        kept = [
            p for p in parts if not p.replace(" ", "").lower().startswith("expandable_segments")
        ]
        if any(p.replace(" ", "").lower() == "expandable_segments:true" for p in parts):
            environ[name] = ",".join(kept + ["expandable_segments:False"])
            changed = True
    return changed


def training_layout(model, device):
    """MODEL in the memory layout it trains fastest in on DEVICE: on the CPU
    channels-last, oneDNN's own layout, which spares each thin convolution a
    reorder of its weights and activations at every call (docs/performance.md
    measures it); on a GPU as built. The values are the same either way, and
    a checkpoint loads into a model of either layout."""
    if device.type == "cpu":
        return model.to(memory_format=torch.channels_last)
    return model
