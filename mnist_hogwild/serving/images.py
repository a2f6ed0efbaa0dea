"""Reading an image as the model reads it: what `infer` and `serve` share.

Images are prepared as MNIST's were: grey; light-on-dark (a light background
is detected from the border and inverted, as a pen drawing on paper); the
ink's bounding box scaled to fit 20x20 and centred by its centre of mass in
28x28; then the training's normalisation. Fashion-MNIST images are only
turned grey, inverted if light, and scaled to 28x28.

Memory is bounded before an image is decoded (read_image); an upload's image
is the body itself or a multipart form's first file (request_image).
"""

import contextlib
import email.message
import struct
import warnings

import numpy as np
import torch

from mnist_hogwild.core.errors import InputError
from mnist_hogwild.core.tables import DATASETS
from mnist_hogwild.learn import data

INK = 0.3  # a pixel is ink above this share of the brightest pixel
# The largest image read (a phone photo has about 12 million pixels).
MAX_PIXELS = 50 * 10**6
# An image whose lightest and darkest pixels differ by less than this share of
# the full range has nothing drawn on it (a blank page, a transparent image).
NO_INK = 0.1
# A photo is shrunk to at most this many pixels on a side before it is read:
# the float work on it then takes tens of MB, whatever the upload. A digit a
# fiftieth of the photo wide still keeps the 20 pixels it is scaled to.
MAX_SIDE = 1024
# The most an image may take decoded, before it is shrunk (a 7000x7000 grey
# PNG takes 47 MB; a 12-megapixel photo as PNG 36 MB, as JPEG far less).
DECODE_BUDGET = 64 * 2**20
LARGE_DECODE = 8 * 2**20  # above this, decoded within read_image's LARGE()
NO_GATE = contextlib.nullcontext()
BYTES_PER_PIXEL = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "PA": 2,
    "La": 2,
    "I;16": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
}
# The share of the picture's shorter side, at each edge, taken as paper.
BORDER = 0.03


def class_probabilities(model, images, dataset):
    """[N, 10] probabilities for uint8 IMAGES [N, 28, 28], normalised as in training."""
    scale, shift = data.normalizer(dataset)
    x = images.unsqueeze(1).float().mul_(scale).sub_(shift)
    with torch.no_grad():
        return model(x).exp()


def prepare_image(path, dataset, source=None, large=contextlib.nullcontext):
    """PATH as a uint8 [28, 28] tensor, light on dark (see the module docstring).
    SOURCE: the image's bytes as a binary file (serve's uploads), named PATH;
    LARGE: see read_image."""
    from PIL import Image  # noqa: PLC0415 - commands only

    image = read_image(path, source, large)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if DATASETS[dataset].preparation != "digit":
        grey = np.asarray(image.convert("L"), dtype=np.float32)
        if float(grey.max() - grey.min()) < NO_INK * 255:
            raise InputError(f"{path}: nothing found (the image is blank: no ink on it)")
        border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        if border.mean() > 127:  # a light background: Fashion-MNIST's is black
            grey = 255 - grey
        return to_uint8(_resize(grey, (28, 28)))
    # (a grey image stays one channel: its ink is the same, at a third of the work)
    ink = ink_map(np.asarray(image if image.mode == "L" else image.convert("RGB")))
    if float(ink.max()) < NO_INK * 255:
        raise InputError(f"{path}: no digit found (the image is blank: no ink on it)")
    return _mnist_digit(ink * (255 / float(ink.max())))


def read_image(path, source=None, large=contextlib.nullcontext):
    """The image at PATH (or in the binary file SOURCE), upright, at most
    MAX_SIDE pixels on a side. Its memory is bounded before it is decoded: a
    JPEG decodes at a reduced scale (draft), any other image must fit
    DECODE_BUDGET decoded, and is shrunk as soon as it is. An image over
    LARGE_DECODE is decoded within LARGE() (serve: a small image's worker
    raises there, and the one worker for large images reads it)."""
    from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: PLC0415 - commands only

    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice that: refuse it all,
            # before a small file decompresses into gigabytes.
            warnings.simplefilter("ignore", UserWarning)  # (a damaged TIFF tag, ...: skipped)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            with Image.open(path if source is None else source) as opened:
                if opened.format == "JPEG":
                    opened.draft("RGB" if opened.mode != "L" else "L", (MAX_SIDE, MAX_SIDE))
                gate = large() if check_decoded_size(path, opened) > LARGE_DECODE else NO_GATE
                with gate:
                    opened.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
                    opened.load()  # (one MAX_SIDE or smaller: thumbnail left it unread)
                ImageOps.exif_transpose(opened, in_place=True)
                return opened
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        millions = MAX_PIXELS // 10**6
        raise InputError(
            f"{path}: too large an image (at most {millions} million pixels)"
        ) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, struct.error) as e:
        # (Pillow's decoders raise all of these for damaged files; SyntaxError
        # for a broken PNG chunk, struct.error for a cut header.)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if source is not None and isinstance(e, UnidentifiedImageError):
            reason = "not a format Pillow knows: PNG, JPEG, GIF, BMP, WebP, TIFF, ..."
        raise InputError(f"{path}: not a readable image ({reason})") from None


def check_decoded_size(path, opened):
    """The bytes the opened image takes decoded (its header says how many);
    InputError (too large) over DECODE_BUDGET."""
    width, height = opened.size
    decoded = width * height * BYTES_PER_PIXEL.get(opened.mode, 4)
    if decoded > DECODE_BUDGET:
        raise InputError(
            f"{path}: too large to read: {width}x{height} pixels ({opened.mode}) take "
            f"{decoded // 2**20} MB decoded, over the {DECODE_BUDGET // 2**20} MB this reads; "
            f"send it smaller, or as a JPEG (read at a reduced scale)"
        )
    return decoded


def ink_map(pixels):
    """How far each pixel of PIXELS (uint8 [H, W] or [H, W, channels]) stands
    out from the paper, light on dark as MNIST's digits are: float [H, W], 0
    on the background, more on the ink.

    The paper is a plane per colour channel fitted to the picture's border (the
    digit is assumed not to touch it), so an even page, a page in shade and a
    colour gradient are all taken away; a pixel's ink is its largest difference
    from that plane over the channels, so blue ink on red paper counts as
    much as black ink on white. The border's own differences are the photo's
    noise: the ink is what lies beyond them."""
    pixels = pixels.reshape(*pixels.shape[:2], -1)
    h, w = pixels.shape[:2]
    band = max(1, round(BORDER * min(h, w)))
    rgb = box_blur(pixels, max(1, round(min(h, w) / 100)) | 1)  # grain smaller than a stroke
    corner = pixels[0, 0]
    sides = pixels[:band], pixels[-band:], pixels[:, :band], pixels[:, -band:]
    if all((side == corner).all() for side in sides):  # (a drawing, the page's canvas:
        # the plane below would be that colour and the noise none; the same ink, far less work)
        return np.abs(rgb - corner, out=rgb).max(axis=2)
    edge = np.ones((h, w), dtype=bool)
    edge[band:-band, band:-band] = False
    ys, xs = np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32)
    rows, cols = edge.nonzero()
    # The border pixels' plane coordinates [B, 3]: a plane is a + bx + cy.
    known = np.stack([np.ones(len(rows), dtype=np.float32), xs[cols], ys[rows]], axis=1)
    values = rgb[edge]  # [B, channels]
    keep = np.ones(len(known), dtype=bool)
    for _ in range(2):  # fit, then again without the border pixels the fit missed by far
        fit = np.linalg.lstsq(known[keep], values[keep], rcond=None)[0]
        miss = np.abs(known @ fit - values).max(axis=1)
        middle = np.quantile(miss, 0.5, method="lower")
        keep = miss <= middle + 3 * np.quantile(np.abs(miss - middle), 0.5, method="lower") + 1
    # The paper taken away in place, one term of the plane at a time: the
    # work stays at one float copy of the picture, whatever its size.
    rgb -= fit[0]
    rgb -= fit[1] * xs[None, :, None]
    rgb -= fit[2] * ys[:, None, None]
    ink = np.abs(rgb, out=rgb).max(axis=2)
    noise = np.float32(np.quantile(ink[edge], 0.99))
    return np.maximum(ink - noise, 0, dtype=np.float32)


def box_blur(pixels, size):
    """uint8 PIXELS [H, W, C] as float32, each the mean of the SIZE x SIZE
    square around it (the picture's edge repeated beyond it)."""
    if size == 1:
        return pixels.astype(np.float32)
    r = size // 2
    padded = np.pad(pixels, ((r, r), (r, r), (0, 0)), mode="edge").astype(np.int32)
    # Sums of a window from running sums: exact in integers, whatever the size.
    sums = np.cumsum(padded, axis=0)
    sums = np.concatenate([sums[size - 1 : size], sums[size:] - sums[:-size]])
    sums = np.cumsum(sums, axis=1)
    sums = np.concatenate([sums[:, size - 1 : size], sums[:, size:] - sums[:, :-size]], axis=1)
    return sums.astype(np.float32) / np.float32(size * size)


def _resize(grey, size):
    """float GREY [H, W] scaled to SIZE (rows, columns): bilinear, antialiased."""
    from PIL import Image  # noqa: PLC0415

    image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32), mode="F")
    return np.asarray(image.resize(size[::-1], Image.Resampling.BILINEAR))


def to_uint8(grey):
    """float GREY, within [0, 255], rounded to a uint8 tensor (the resize's
    weights are positive and sum to 1: what it makes stays within the range)."""
    return torch.from_numpy(np.rint(grey).astype(np.uint8))


def _mnist_digit(grey):
    """float GREY [H, W] (at most 255): the ink's bounding box fitted into
    20x20, centred by its centre of mass in 28x28, as a uint8 tensor."""
    ink = grey > INK * max(float(grey.max()), 1.0)
    canvas = np.zeros((28, 28), dtype=np.float32)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        return to_uint8(canvas)
    box = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = box.shape
    factor = 20 / max(h, w)
    digit = _resize(box, (max(1, round(h * factor)), max(1, round(w * factor))))
    h, w = digit.shape
    mass = max(float(digit.sum()), 1e-6)
    cy = float(digit.sum(axis=1) @ np.arange(h)) / mass
    cx = float(digit.sum(axis=0) @ np.arange(w)) / mass
    top = min(max(round(14 - cy), 0), 28 - h)
    left = min(max(round(14 - cx), 0), 28 - w)
    canvas[top : top + h, left : left + w] = digit
    return to_uint8(canvas)


def nonempty(image):
    if not image:
        raise InputError("the image: the body is empty: send the image's bytes, or a form's file")
    return image


def request_image(body, content_type):
    """The image in a request's BODY: the first file of a multipart form, else
    the body itself (its bytes say what it is, whatever CONTENT_TYPE claims)."""
    header = email.message.Message()
    header["content-type"] = content_type or "application/octet-stream"
    if header.get_content_type() != "multipart/form-data":  # (lower-cased by email)
        return nonempty(body)
    boundary = header.get_param("boundary")
    if not boundary:
        raise InputError("the image: a multipart/form-data body without its boundary")
    for part in body.split(b"--" + str(boundary).encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, found, payload = part.partition(b"\r\n\r\n")
        fields = head.decode("latin-1").lower()
        if found and ("filename=" in fields or "content-type: image/" in fields):
            return nonempty(payload.removesuffix(b"\r\n"))
    raise InputError(
        "the image: the form has no file in it: send the image as a file (curl -F file=@7.png)"
    )
