"""Write small, learnable MNIST-format IDX files (no network needed).

Each class c draws a bright 7x7 block at a class-specific place on a noisy
background, so a few hundred batches reach high accuracy.

    python tools/synthetic_data.py DATA_DIR [--train N] [--test N] [--gzip]
        [--dataset mnist|fashion-mnist]
"""

import argparse
import gzip
import os

import torch

FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def make_split(n, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator, dtype=torch.uint8)
    images = torch.randint(0, 60, (n, 28, 28), generator=generator, dtype=torch.uint8)
    for c in range(10):
        rows, cols = 2 + 6 * (c // 4), 2 + 6 * (c % 4) + (c // 8) * 3
        mask = labels == c
        block = images[mask, rows : rows + 7, cols : cols + 7]
        images[mask, rows : rows + 7, cols : cols + 7] = (block + 190).clamp(max=255)
    return images, labels


def idx_bytes(tensor, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    return header + bytes(tensor.flatten().tolist())


def write_files(data_dir, train=2000, test=500, gz=False, dataset="mnist", seed=0):
    raw = os.path.join(data_dir, FOLDERS[dataset], "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n, split_seed in (("train", train, seed), ("t10k", test, seed + 1)):
        images, labels = make_split(n, split_seed)
        for kind, tensor, magic in (
            ("images-idx3-ubyte", images, 0x803),
            ("labels-idx1-ubyte", labels, 0x801),
        ):
            path = os.path.join(raw, f"{prefix}-{kind}")
            payload = idx_bytes(tensor, magic)
            if gz:
                with gzip.open(path + ".gz", "wb") as f:
                    f.write(payload)
            else:
                with open(path, "wb") as f:
                    f.write(payload)
    return raw


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--dataset", choices=sorted(FOLDERS), default="mnist")
    a = parser.parse_args()
    print(write_files(a.data_dir, a.train, a.test, a.gzip, a.dataset))
