import dataclasses
import gzip
import os
import shutil
import urllib.error

import pytest
import torch

from mnist_hogwild.learn import data
import synthetic_data


def write(tmp_path, **kwargs):
    root = str(tmp_path / "root")
    synthetic_data.write_files(root, train=300, test=100, **kwargs)
    return root, data.raw_dir(root, kwargs.get("dataset", "mnist"))


def test_unpacked_and_gzipped_files_read_the_same(tmp_path):
    plain_root, _ = write(tmp_path / "a")
    gz_root, gz_raw = write(tmp_path / "b", gz=True)
    plain = data.map_split(data.prepare(plain_root, "mnist")["train"])
    packed = data.map_split(data.prepare(gz_root, "mnist")["train"])
    assert plain.images.shape == (300, 28, 28) and plain.images.dtype == torch.uint8
    assert len(plain) == 300
    assert torch.equal(plain.images, packed.images)
    assert torch.equal(plain.labels, packed.labels)
    # The gzipped files were unpacked beside themselves, for the next run.
    assert os.path.exists(os.path.join(gz_raw, "train-images-idx3-ubyte"))


def test_split_is_memory_mapped_not_copied(tmp_path):
    root, _ = write(tmp_path)
    files = data.prepare(root, "mnist")["train"]
    split = data.map_split(files)  # kept alive: the mapping lasts as long as the tensor
    maps = open("/proc/self/maps").read()
    assert os.path.realpath(files.images) in maps
    assert len(split) == 300


def test_read_only_data_dir_unpacks_into_temp_cache(tmp_path, monkeypatch):
    root, raw = write(tmp_path, gz=True)
    monkeypatch.setattr(data.tempfile, "gettempdir", lambda: str(tmp_path / "cache"))
    monkeypatch.setattr(data, "writable_dir", lambda path: False)
    files = data.prepare(root, "mnist")
    assert files["train"].images.startswith(str(tmp_path / "cache"))
    assert not os.path.exists(os.path.join(raw, "train-images-idx3-ubyte"))
    assert len(data.map_split(files["test"])) == 100


def test_batch_is_normalised(tmp_path):
    root, _ = write(tmp_path)
    split = data.map_split(data.prepare(root, "mnist")["train"])
    scale, shift = data.normalizer("mnist")
    x, y = data.make_batch(split, torch.tensor([0, 5]), scale, shift)
    expected = (split.images[[0, 5]].float() / 255 - 0.1307) / 0.3081
    assert x.shape == (2, 1, 28, 28) and y.dtype == torch.int64
    assert torch.allclose(x[:, 0], expected, atol=1e-5)
    assert y.tolist() == split.labels[[0, 5]].tolist()


def corrupt(raw, name, mutate):
    path = os.path.join(raw, name)
    with open(path, "rb") as f:
        payload = bytearray(f.read())
    with open(path, "wb") as f:
        f.write(mutate(payload))
    return path


@pytest.mark.parametrize(
    "name, mutate, message",
    [
        ("train-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x01" + b[4:], "magic number"),
        ("train-labels-idx1-ubyte", lambda b: b"\x00\x00\x08\x03" + b[4:], "magic number"),
        ("train-images-idx3-ubyte", lambda b: b[:-100], "is corrupt"),
        ("t10k-labels-idx1-ubyte", lambda b: b[:6], "truncated"),
        ("train-images-idx3-ubyte", lambda b: b[:8] + (32).to_bytes(4, "big") + b[12:], "32x28"),
        ("train-labels-idx1-ubyte", lambda b: b[:8] + bytes([200]) + b[9:], "label 200"),
    ],
)
def test_corrupt_files_give_a_clear_error(tmp_path, name, mutate, message):
    root, raw = write(tmp_path)
    corrupt(raw, name, mutate)
    with pytest.raises(data.DataError, match=message):
        files = data.prepare(root, "mnist")
        data.map_split(files["train"])
        data.map_split(files["test"])


def test_image_and_label_counts_must_agree(tmp_path):
    root, raw = write(tmp_path)
    other, other_raw = write(tmp_path / "other")
    synthetic_data.write_files(other, train=299, test=100)
    shutil.copy(os.path.join(other_raw, "train-labels-idx1-ubyte"), raw)
    with pytest.raises(data.DataError, match="300 images but .* 299 labels"):
        data.map_split(data.prepare(root, "mnist")["train"])


def test_corrupt_gzip_gives_a_clear_error(tmp_path):
    root, raw = write(tmp_path, gz=True)
    corrupt(raw, "train-images-idx3-ubyte.gz", lambda b: b[: len(b) // 2])
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz is corrupt"):
        data.prepare(root, "mnist")
    assert not os.path.exists(os.path.join(raw, "train-images-idx3-ubyte"))


def test_missing_files_and_no_network_name_the_files(tmp_path, monkeypatch):
    def offline(url, dst, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data.torch.hub, "download_url_to_file", offline)
    with pytest.raises(data.DataError) as err:
        data.prepare(str(tmp_path), "mnist")
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert os.path.join(str(tmp_path), "MNIST", "raw") in message
    assert "Name or service not known" in message and "\n" not in message
    assert os.listdir(tmp_path) == []  # no empty MNIST/raw folders left behind


def test_a_failed_download_keeps_the_folders_that_were_there(tmp_path, monkeypatch):
    def offline(url, dst, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data.torch.hub, "download_url_to_file", offline)
    (tmp_path / "data" / "MNIST").mkdir(parents=True)
    with pytest.raises(data.DataError):
        data.prepare(str(tmp_path / "data"), "mnist")
    assert (
        os.listdir(tmp_path / "data") == ["MNIST"] and os.listdir(tmp_path / "data" / "MNIST") == []
    )


def test_download_with_wrong_md5_is_rejected(tmp_path, monkeypatch):
    def fake(url, dst, **kwargs):
        with open(dst, "wb") as f:
            f.write(gzip.compress(b"not mnist"))

    monkeypatch.setattr(data.torch.hub, "download_url_to_file", fake)
    with pytest.raises(data.DataError, match="MD5"):
        data.prepare(str(tmp_path), "fashion-mnist")
    assert not os.path.exists(data.raw_dir(str(tmp_path), "fashion-mnist"))


def test_download_with_right_md5_is_kept(tmp_path, monkeypatch):
    payload = gzip.compress(b"x")
    digest = data.hashlib.md5(payload).hexdigest()
    mnist = data.DATASETS["mnist"]
    monkeypatch.setitem(
        data.DATASETS, "mnist", dataclasses.replace(mnist, md5=dict.fromkeys(mnist.md5, digest))
    )

    def fake(url, dst, **kwargs):
        with open(dst, "wb") as f:
            f.write(payload)

    monkeypatch.setattr(data.torch.hub, "download_url_to_file", fake)
    # The fake payload is not IDX: downloading succeeds, unpacked structure check fails.
    files = data.prepare(str(tmp_path), "mnist")
    with pytest.raises(data.DataError, match="truncated"):
        data.map_split(files["train"])
