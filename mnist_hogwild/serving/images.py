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
        grey = _pixels(image.convert("L"), 1)[0]
        if float(grey.max() - grey.min()) < NO_INK * 255:
            raise InputError(f"{path}: nothing found (the image is blank: no ink on it)")
        border = torch.cat([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        if border.mean() > 127:  # a light background: Fashion-MNIST's is black
            grey = 255 - grey
        return _resize(grey, (28, 28)).round().clamp(0, 255).to(torch.uint8)
    ink = ink_map(_pixels(image.convert("RGB"), 3))
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
                return ImageOps.exif_transpose(opened)
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


def _pixels(image, channels):
    """A Pillow IMAGE's pixels as a float [CHANNELS, H, W] tensor."""
    values = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return values.view(image.size[1], image.size[0], channels).permute(2, 0, 1).float()


def ink_map(rgb):
    """How far each pixel of RGB (float [3, H, W]) stands out from the paper,
    light on dark as MNIST's digits are: 0 on the background, more on the ink.

    The paper is a plane per colour channel fitted to the picture's border (the
    digit is assumed not to touch it), so an even page, a page in shade and a
    colour gradient are all taken away; a pixel's ink is its largest difference
    from that plane over the three channels, so blue ink on red paper counts as
    much as black ink on white. The border's own differences are the photo's
    noise: the ink is what lies beyond them."""
    h, w = rgb.shape[1:]
    band = max(1, round(BORDER * min(h, w)))
    edge = torch.ones(h, w, dtype=torch.bool)
    edge[band:-band, band:-band] = False
    paper = rgb[:, edge]  # [3, B]
    even = bool((paper == paper[:, :1]).all())
    source = rgb.data_ptr()  # (the caller's: never changed)
    blur = max(1, round(min(h, w) / 100)) | 1  # grain smaller than a stroke
    if blur > 1:
        padded = torch.nn.functional.pad(rgb[None], [blur // 2] * 4, mode="replicate")
        rgb = torch.nn.functional.avg_pool2d(padded, blur, stride=1)[0]
    if even:  # (a drawing, the page's canvas: the plane below would be that
        # colour and the noise none; the same ink, at a tenth of the work)
        return (rgb - paper[:, :1, None]).abs_().amax(dim=0)
    ys, xs = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
    rows, cols = edge.nonzero(as_tuple=True)
    # The border pixels' plane coordinates [B, 3]: a plane is a + bx + cy.
    known = torch.stack([torch.ones(len(rows)), xs[cols], ys[rows]], dim=1)
    values = rgb[:, edge].T  # [B, 3]
    keep = torch.ones(len(known), dtype=torch.bool)
    for _ in range(2):  # fit, then again without the border pixels the fit missed by far
        fit = torch.linalg.lstsq(known[keep], values[keep]).solution
        miss = (known @ fit - values).abs().amax(dim=1)
        keep = miss <= miss.median() + 3 * (miss - miss.median()).abs().median() + 1
    # The paper taken away in place, one term of the plane at a time: the
    # work stays at one [3, H, W] copy of the picture, whatever its size.
    ink = rgb.clone() if rgb.data_ptr() == source else rgb
    ink.sub_(fit[0][:, None, None]).sub_(fit[1][:, None, None] * xs[None, None, :])
    ink.sub_(fit[2][:, None, None] * ys[None, :, None])
    ink = ink.abs_().amax(dim=0)
    noise = float(torch.quantile(ink[edge], 0.99))
    return (ink - noise).clamp_(min=0)


def _resize(grey, size):
    return torch.nn.functional.interpolate(
        grey[None, None], size=size, mode="bilinear", antialias=True, align_corners=False
    )[0, 0]


def _mnist_digit(grey):
    """The ink's bounding box fitted into 20x20, centred by its centre of mass in 28x28."""
    ink = grey > INK * max(float(grey.max()), 1.0)
    canvas = torch.zeros(28, 28)
    if not bool(ink.any()):
        return canvas.to(torch.uint8)
    rows, cols = ink.any(dim=1).nonzero(), ink.any(dim=0).nonzero()
    box = grey[int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1]
    h, w = box.shape
    factor = 20 / max(h, w)
    digit = _resize(box, (max(1, round(h * factor)), max(1, round(w * factor)))).clamp(0, 255)
    h, w = digit.shape
    mass = digit.sum().clamp(min=1e-6)
    cy = float((digit.sum(dim=1) * torch.arange(h)).sum() / mass)
    cx = float((digit.sum(dim=0) * torch.arange(w)).sum() / mass)
    top = min(max(round(14 - cy), 0), 28 - h)
    left = min(max(round(14 - cx), 0), 28 - w)
    canvas[top : top + h, left : left + w] = digit
    return canvas.round().to(torch.uint8)


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
