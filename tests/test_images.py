"""Reading images, as infer and serve do: every damaged or hostile file is
one InputError (one line in infer, a 400 or 413 in serve), never another
exception; memory is bounded before decoding. In process, with a mutation
fuzzer over several formats (a fixed seed, so a failure reproduces)."""

import io
import random
import struct
import zlib

import pytest
from PIL import Image, ImageDraw

from mnist_hogwild.serving import images as infer
from mnist_hogwild.core.errors import InputError

FORMATS = {"PNG": {}, "JPEG": {"quality": 85}, "GIF": {}, "BMP": {}, "TIFF": {}, "WEBP": {}}
MUTANTS = 3000


def seeds():
    """A small digit in every format (and a PNG with transparency, a palette)."""
    image = Image.new("RGB", (40, 40), "white")
    ImageDraw.Draw(image).line([(20, 5), (18, 35)], fill="black", width=4)
    out = []
    for fmt, options in FORMATS.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        out.append(buffer.getvalue())
    for mode in ("RGBA", "P", "LA"):
        buffer = io.BytesIO()
        image.convert(mode).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def mutate(data, rng):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(5)
        at = rng.randrange(len(data))
        if how == 0:  # a flipped bit
            data[at] ^= 1 << rng.randrange(8)
        elif how == 1:  # a random byte
            data[at] = rng.randrange(256)
        elif how == 2:  # cut short
            del data[at:]
        elif how == 3:  # bytes inserted
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:  # a run of 0xff (huge sizes in headers)
            data[at : at + 4] = b"\xff\xff\xff\xff"
        if not data:
            data = bytearray(b"\x89")
    return bytes(data)


def test_a_mutation_fuzzer_over_every_format_only_ever_gets_input_errors():
    rng = random.Random(20261207)
    kinds, other = {"read": 0, "refused": 0}, []
    originals = seeds()
    for i in range(MUTANTS):
        data = mutate(originals[i % len(originals)], rng)
        try:
            infer.prepare_image("fuzzed", "mnist", io.BytesIO(data))
            kinds["read"] += 1
        except InputError as e:
            assert "\n" not in str(e)
            kinds["refused"] += 1
        except Exception as e:  # noqa: BLE001 - what the fuzzer is looking for
            other.append((i, type(e).__name__, str(e)[:80]))
    assert not other, other[:5]
    assert kinds["read"] > 100 and kinds["refused"] > 100, kinds  # the premise: both happen


def chunk(kind, payload):
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def test_a_png_cut_after_its_header_is_one_error():
    """62 bytes: the signature, IHDR, then a chunk cut short. (The issue's
    Pillow raised SyntaxError for such a file, this one OSError: every one of
    Pillow's exceptions is one error; a stand-in raises each in test_commands.)"""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
    cut = b"\x89PNG\r\n\x1a\n" + ihdr + struct.pack(">I", 40) + b"IDAT" + b"\x78\x9c" + bytes(19)
    assert len(cut) == 62
    with pytest.raises(InputError, match="not a readable image"):
        infer.prepare_image("bad.png", "mnist", io.BytesIO(cut))


def test_memory_is_bounded_before_decoding():
    """A 6000x6000 colour PNG (102 MB decoded) is refused from its header; a
    12-megapixel JPEG is decoded at a reduced scale; a 7000x7000 grey page fits."""
    big = io.BytesIO()
    Image.new("RGB", (6000, 6000), "white").save(big, "PNG")
    with pytest.raises(
        InputError, match=r"too large to read: 6000x6000 pixels \(RGB\) take 102 MB"
    ):
        infer.read_image("big.png", io.BytesIO(big.getvalue()))
    photo = io.BytesIO()
    Image.new("RGB", (4000, 3000), "white").save(photo, "JPEG")
    assert max(infer.read_image("photo.jpg", io.BytesIO(photo.getvalue())).size) <= infer.MAX_SIDE
    page = io.BytesIO()
    Image.new("L", (7000, 7000), 255).save(page, "PNG")
    assert infer.read_image("page.png", io.BytesIO(page.getvalue())).size == (1024, 1024)


@pytest.mark.parametrize("size", [3, 5, 11])
def test_the_blur_is_torch_s_mean_over_a_square_with_the_edge_repeated(size):
    """box_blur (numpy, running sums) against avg_pool2d on replicate padding."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    pixels = np.random.default_rng(size).integers(0, 256, (37, 23, 3), dtype=np.uint8)
    padded = torch.nn.functional.pad(
        torch.from_numpy(pixels).permute(2, 0, 1)[None].float(), [size // 2] * 4, mode="replicate"
    )
    expected = torch.nn.functional.avg_pool2d(padded, size, stride=1)[0].permute(1, 2, 0)
    blurred = infer.box_blur(pixels, size)
    assert blurred.shape == (37, 23, 3)
    assert np.abs(blurred - expected.numpy()).max() < 1e-3


@pytest.mark.parametrize(
    "shape, size", [((81, 20), (20, 5)), ((7, 9), (28, 28)), ((300, 40), (28, 28))]
)
def test_the_resize_is_torch_s_antialiased_bilinear(shape, size):
    """_resize (Pillow) against torch's interpolate, antialiased: shrinking
    and enlarging, in both directions at once."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    grey = np.random.default_rng(1).uniform(0, 255, shape).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(grey)[None, None], size=size, mode="bilinear", antialias=True
    )[0, 0]
    resized = infer._resize(grey, size)
    assert resized.shape == size
    assert np.abs(resized - expected.numpy()).max() < 0.01
