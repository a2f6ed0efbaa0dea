"""MNIST-format data: find, download, verify and memory-map the IDX files.

torchvision is deliberately not used: its wheels are built against CUDA torch
and do not import next to the CPU-only torch this project pins. Reading IDX
is a few lines, and memory-mapping the unpacked files lets every Hogwild
worker share one copy of the data through the page cache (nothing goes
through /dev/shm, whose Docker default is only 64 MB).
"""

import gzip
import hashlib
import os
import shutil
import socket
import tempfile
import urllib.error
import zlib
from dataclasses import dataclass

import torch

from mnist_hogwild.core.tables import DATASETS
from mnist_hogwild.core.errors import DataError

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
ROWS = COLS = 28
NUM_CLASSES = 10
DOWNLOAD_TIMEOUT = 60  # seconds without data before a download gives up

SPLITS = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class SplitFiles:
    """Paths of one split's unpacked IDX files (what workers memory-map)."""

    images: str
    labels: str


@dataclass(frozen=True)
class Split:
    """One split, memory-mapped: uint8 images [N, 28, 28] and uint8 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self):
        return self.labels.numel()


# The validation images are chosen by this fixed seed, not by --seed: every
# run, seed and node holds out the same ones, and a resume keeps them.
VALIDATION_SEED = 20_000_917


def hold_out(num_samples, size):
    """(training indices, validation indices) of a training split of
    NUM_SAMPLES, SIZE of them held out; both sorted, int64 on the CPU."""
    if size == 0:
        return torch.arange(num_samples), torch.arange(0)
    if size >= num_samples:
        raise DataError(
            f"--validation-size {size} leaves no training images: the training set has "
            f"{num_samples}; pass a smaller one (or 0: decide on the test set)"
        )
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    return order[size:].sort().values, order[:size].sort().values


def subset(split, indices):
    """The images and labels of SPLIT at INDICES, as a copy."""
    return Split(split.images[indices].clone(), split.labels[indices].clone())


def raw_dir(data_dir, dataset):
    return os.path.join(data_dir, DATASETS[dataset].folder, "raw")


def read_header(path, magic):
    """Return the dimensions of an unpacked IDX file after checking its structure."""
    ndim = magic & 0xFF
    try:
        with open(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
        size = os.path.getsize(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: {size} bytes is too short for an IDX header")
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} is not an IDX {'image' if ndim == 3 else 'label'} file "
            f"(magic number {found:#010x}, expected {magic:#010x})"
        )
    dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [ROWS, COLS]:
        raise DataError(f"{path} holds {dims[1]}x{dims[2]} images, expected {ROWS}x{COLS}")
    expected = 4 + 4 * ndim + dims[0] * (ROWS * COLS if ndim == 3 else 1)
    if size != expected:
        raise DataError(
            f"{path} is corrupt: its header says {dims[0]} items ({expected} bytes) "
            f"but the file has {size} bytes"
        )
    return dims


def map_split(files):
    """Memory-map one split without copying it (MAP_PRIVATE, read-only file is fine)."""
    n_images = read_header(files.images, IMAGE_MAGIC)[0]
    n_labels = read_header(files.labels, LABEL_MAGIC)[0]
    if n_images != n_labels:
        raise DataError(
            f"{files.images} has {n_images} images but {files.labels} has {n_labels} labels"
        )
    images = torch.from_file(
        files.images, shared=False, size=16 + n_images * ROWS * COLS, dtype=torch.uint8
    )[16:].view(n_images, ROWS, COLS)
    labels = torch.from_file(files.labels, shared=False, size=8 + n_labels, dtype=torch.uint8)[8:]
    if n_labels and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{files.labels} holds label {int(labels.max())}; expected 0..9")
    return Split(images, labels)


def load_split(files):
    """One split read into memory (a copy, not a mapping): the parent's test
    split, so that a data file truncated under a running trainer can kill a
    worker (reported, naming the file) but never the parent mid-evaluation."""
    split = map_split(files)
    return Split(split.images.clone(), split.labels.clone())


def changed_files(files):
    """The files of FILES (a {split: SplitFiles} dict) that no longer match
    their headers: what a worker killed by SIGBUS was reading."""
    changed = []
    for split in files.values():
        for path, magic in ((split.images, IMAGE_MAGIC), (split.labels, LABEL_MAGIC)):
            try:
                read_header(path, magic)
            except DataError as e:
                changed.append(str(e))
    return changed


def to_device(split, device):
    """SPLIT on DEVICE: the mapped file itself on the CPU; a uint8 copy on a GPU
    (47 MB for MNIST's training split), made once and shared with the workers."""
    if device.type == "cpu":
        return split
    return Split(split.images.to(device), split.labels.to(device))


def normalizer(dataset):
    """(scale, shift) so that uint8 pixels * scale - shift == (x/255 - mean) / std."""
    mean, std = DATASETS[dataset].mean, DATASETS[dataset].std
    return 1.0 / (255.0 * std), mean / std


def make_batch(split, indices, scale, shift):
    """Gather a batch from the mapped split and normalise it: ([B,1,28,28] float, [B] int64)."""
    x = split.images.index_select(0, indices).unsqueeze(1).float()
    x.mul_(scale).sub_(shift)
    return x, split.labels.index_select(0, indices).long()


def md5sum(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(dataset, name, dest_dir):
    """Fetch NAME.gz into dest_dir from the first mirror that works; check its MD5."""
    info = DATASETS[dataset]
    gz_name = name + ".gz"
    dest = os.path.join(dest_dir, gz_name)
    # download_url_to_file has no timeout of its own; without one a dropped
    # connection hangs forever. Restored afterwards: it is process-wide.
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        return _download_from_mirrors(info, gz_name, dest)
    finally:
        socket.setdefaulttimeout(old_timeout)


def _download_from_mirrors(info, gz_name, dest):
    """Download into a temp file of this process's own, check it, rename it into
    place: nodes (or runs) sharing a data directory never write one file
    together, and whoever finishes first wins; the others find it complete."""
    reasons = []
    for mirror in info.mirrors:
        if os.path.exists(dest) and md5sum(dest) == info.md5[gz_name]:
            return dest  # another node fetched it meanwhile
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=f".{gz_name}.", suffix=".part")
        os.close(fd)
        try:
            torch.hub.download_url_to_file(mirror + gz_name, tmp, progress=False)
            digest = md5sum(tmp)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reasons.append(f"{mirror}: {getattr(e, 'reason', None) or e}")
            _remove(tmp)
            continue
        if digest != info.md5[gz_name]:
            _remove(tmp)
            reasons.append(f"{mirror}: MD5 {digest} != published {info.md5[gz_name]}")
            continue
        os.replace(tmp, dest)
        return dest
    raise DataError("download failed (" + "; ".join(reasons) + ")")


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def unpack(gz_path, dest):
    """Decompress atomically, so an interrupted unpack never leaves a half file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".unpack-")
    try:
        with gzip.open(gz_path, "rb") as src, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, dest)
    except (OSError, EOFError, zlib.error) as e:
        _remove(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise DataError(f"cannot unpack {gz_path} to {dest}: {e.strerror}") from None
        raise DataError(f"{gz_path} is corrupt: {e}") from None


def remove_empty(folders):
    """Remove FOLDERS (deepest first) where they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return  # not empty (or not ours to remove): nor is any folder above it


def writable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


FILES = [
    f"{s}-{kind}" for s in SPLITS.values() for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
]


def fetch_missing(raw, dataset, can_write, log):
    """Download the files that are in RAW neither unpacked nor gzipped."""
    present = {n for n in FILES for e in ("", ".gz") if os.path.exists(os.path.join(raw, n + e))}
    missing = [name for name in FILES if name not in present]
    if not missing:
        return
    if not can_write:
        raise DataError(
            f"missing {', '.join(missing)} in {raw}, which is not writable, so they "
            f"cannot be downloaded; put the files (.gz or unpacked) there"
        )
    log(f"downloading {len(missing)} {dataset} file(s) into {raw}")
    for name in missing:
        try:
            download(dataset, name, raw)
        except DataError as e:
            raise DataError(
                f"{dataset} files missing from {raw}: {', '.join(missing)}; {e}. "
                f"Put the files (.gz or unpacked) there, or point --data-dir at them"
            ) from None


def unpacked(raw, name, cache, can_write):
    """The path of NAME unpacked: in RAW, or unpacked from NAME.gz (beside it, or
    into CACHE when RAW is read-only)."""
    plain = os.path.join(raw, name)
    if os.path.exists(plain):
        return plain
    target = plain if can_write else os.path.join(cache, name)
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        unpack(plain + ".gz", target)
    return target


def prepare(data_dir, dataset, log=print):
    """Make sure both splits exist unpacked; return {"train": SplitFiles, "test": ...}.

    Looks in DATA_DIR/<Folder>/raw for the unpacked file, else NAME.gz (unpacked
    next to it, or into a per-user temp cache when the data dir is read-only),
    else downloads NAME.gz. Each file is checked by structure when mapped.
    """
    raw = raw_dir(data_dir, dataset)
    absent = [d for d in (raw, os.path.dirname(raw), data_dir) if not os.path.isdir(d)]
    can_write = writable_dir(raw)
    try:
        fetch_missing(raw, dataset, can_write, log)
    except DataError:
        remove_empty(absent)  # a failed download leaves no empty folders behind
        raise
    cache = os.path.join(tempfile.gettempdir(), f"mnist-hogwild-{os.getuid()}", dataset)
    paths = {name: unpacked(raw, name, cache, can_write) for name in FILES}
    return {
        split: SplitFiles(paths[f"{p}-images-idx3-ubyte"], paths[f"{p}-labels-idx1-ubyte"])
        for split, p in SPLITS.items()
    }
