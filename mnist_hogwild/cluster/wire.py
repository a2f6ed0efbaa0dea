"""What crosses between nodes, and how a failure to cross reads: objects as
pickled bytes over gloo, tensors as one float64 vector, and the decorator
that turns a failed collective into one ClusterError line."""

import ctypes
import pickle

import torch
import torch.distributed as dist

from mnist_hogwild.core.errors import ClusterError, one_line


def collective(what, training=False):
    """Turn a failed collective into one ClusterError line (node killed, cut
    off, timed out). The decorated method's object has .rank and .options.
    TRAINING: a collective of the training itself, not of the start."""

    def wrap(function):
        def run(self, *args, **kwargs):
            try:
                return function(self, *args, **kwargs)
            except (RuntimeError, dist.DistError) as e:
                hint = "" if training else "; a node that failed at start says why in its log"
                raise ClusterError(
                    f"node {self.rank}: lost contact with the other nodes during {what} "
                    f"({one_line(e, 160)}; --sync-timeout is {self.options.sync_timeout:g} s"
                    f"{hint})"
                ) from None

        return run

    return wrap


# Objects between nodes. Not torch's all_gather_object/broadcast_object_list:
# they read the bytes back with tensor.numpy(), so training across machines
# would need numpy, which only the pictures use (torch does not require it).
# These send pickles as uint8 tensors and read them back with ctypes.
def _bytes_tensor(payload):
    return (
        torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        if payload
        else torch.zeros(0, dtype=torch.uint8)
    )


def _tensor_bytes(tensor, size):
    return ctypes.string_at(tensor.data_ptr(), size) if size else b""


def all_gather_objects(obj, world, group=None):
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


def broadcast_bytes(payload, src, rank, group=None):
    """SRC's PAYLOAD (bytes) on every node."""
    size = torch.tensor([len(payload) if rank == src else 0], dtype=torch.int64)
    dist.broadcast(size, src=src, group=group)
    data = _bytes_tensor(payload) if rank == src else torch.zeros(int(size), dtype=torch.uint8)
    dist.broadcast(data, src=src, group=group)
    return _tensor_bytes(data, int(size))


def flat(tensors):
    """TENSORS as one float64 CPU vector (gloo's transport; exact for float32)."""
    parts = [t.detach().reshape(-1).to("cpu", torch.float64) for t in tensors]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def copy_into(tensors, flat):
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
