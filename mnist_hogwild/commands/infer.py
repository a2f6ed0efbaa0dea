"""The `infer` command: what digit does the model see?

With image files (PNG, JPEG, ... any size, colour or grey, dark or light
background), it prints each file's digit and probability, and the next two. Without, it picks
--num-samples random test images and writes each as a PNG named by its
predicted digit into --out-dir (the course's next assignment).

Images are prepared as MNIST's were: grey; light-on-dark (a light background
is detected from the border and inverted, as a pen drawing on paper); the
ink's bounding box scaled to fit 20x20 and centred by its centre of mass in
28x28; then the training's normalisation. Fashion-MNIST images are only
turned grey, inverted if light, and scaled to 28x28.
"""

import contextlib
import os
import struct
import sys
import warnings

import torch

from mnist_hogwild.training import checkpoint
from mnist_hogwild.core.tables import DATASETS
from mnist_hogwild.learn import data
from mnist_hogwild.core.errors import InputError
from mnist_hogwild.commands.output import write_output
from mnist_hogwild.core.loglines import say

INK = 0.3  # a pixel is ink above this share of the brightest pixel
# The largest image read (a phone photo has about 12 million pixels).
MAX_PIXELS = 50 * 10**6
# An image whose lightest and darkest pixels differ by less than this share of
# the full range has nothing drawn on it (a blank page, a transparent image).
NO_INK = 0.1
ZOOM = 8  # the pictures infer writes: each of the 28x28 pixels as 8x8
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


def run_command(args):
    model, state = checkpoint.load_model(args.checkpoint)
    dataset = state["config"].get("dataset", "mnist")
    if args.images:
        return classify_files(model, dataset, args.images, args.show, args.checkpoint)
    return classify_test_images(model, dataset, args)


def class_probabilities(model, images, dataset):
    """[N, 10] probabilities for uint8 IMAGES [N, 28, 28], normalised as in training."""
    scale, shift = data.normalizer(dataset)
    x = images.unsqueeze(1).float().mul_(scale).sub_(shift)
    with torch.no_grad():
        return model(x).exp()


def predict(model, images, dataset):
    """(digits, probabilities) for uint8 IMAGES [N, 28, 28]."""
    best = class_probabilities(model, images, dataset).max(dim=1)
    return best.indices.tolist(), best.values.tolist()


def classify_files(model, dataset, paths, show, model_path):
    """Print each file's digit; a file that cannot be read is one error line,
    and the others are still answered. Exit 1 if any failed. With SHOW (a
    folder), also write what the model saw there."""
    failed = 0
    for path in paths:
        try:
            image = prepare_image(path, dataset)
        except InputError as e:
            say(f"error: {e}", sys.stderr)
            failed += 1
            continue
        probabilities = class_probabilities(model, image.unsqueeze(0), dataset)[0]
        answer, runners_up = top_three(probabilities)
        shown = ""
        if show:
            name = os.path.splitext(os.path.basename(path))[0] + ".seen.png"
            seen = os.path.join(show, name)
            picture = labelled(image, answer, f"then {runners_up}")
            write_output(seen, lambda f, picture=picture: picture.save(f, "PNG"), model_path)
            shown = f" (seen: {seen})"
        say(f"{path}: {answer}; then {runners_up}{shown}")
    return 1 if failed else 0


def top_three(probabilities):
    """("7 (98.1%)", "1 (1.2%), 2 (0.3%)"): the answer, and the next two."""
    top = probabilities.topk(3)
    pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
    answers = [f"{d} ({100 * p:.1f}%)" for d, p in pairs]
    return answers[0], ", ".join(answers[1:])


def labelled(image, answer, detail):
    """The 28x28 IMAGE enlarged (each pixel a square, as the model sees it),
    over a caption: ANSWER large, DETAIL below."""
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

    side = 28 * ZOOM
    picture = Image.new("RGB", (side, side + 56), "white")
    picture.paste(_png(image).resize((side, side), Image.Resampling.NEAREST).convert("RGB"))
    draw = ImageDraw.Draw(picture)
    draw.text((8, side + 4), answer, fill="black", font=ImageFont.load_default(24))
    draw.text((8, side + 34), detail, fill="#444", font=ImageFont.load_default(14))
    return picture


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
    LARGE_DECODE is decoded within LARGE() (serve: one at a time)."""
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
    source = rgb.data_ptr()  # (the caller's: never changed)
    blur = max(1, round(min(h, w) / 100)) | 1  # grain smaller than a stroke
    if blur > 1:
        padded = torch.nn.functional.pad(rgb[None], [blur // 2] * 4, mode="replicate")
        rgb = torch.nn.functional.avg_pool2d(padded, blur, stride=1)[0]
    band = max(1, round(BORDER * min(h, w)))
    edge = torch.ones(h, w, dtype=torch.bool)
    edge[band:-band, band:-band] = False
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


def classify_test_images(model, dataset, args):
    files = data.prepare(args.data_dir, dataset, log=lambda message: None)
    test = data.load_split(files["test"])
    generator = torch.Generator().manual_seed(args.sample_seed)
    count = min(args.num_samples, len(test))
    if count < args.num_samples:
        say(f"note: the test set has {len(test)} images: writing all of them", sys.stderr)
    chosen = torch.randperm(len(test), generator=generator)[:count]
    images = test.images.index_select(0, chosen)
    digits, probabilities = predict(model, images, dataset)
    taken = {}
    for index, image, digit, probability in zip(
        chosen.tolist(), images, digits, probabilities, strict=True
    ):
        taken[digit] = taken.get(digit, 0) + 1
        name = f"{digit}.png" if taken[digit] == 1 else f"{digit}-{taken[digit]}.png"
        path = os.path.join(args.out_dir, name)
        truth = int(test.labels[index])
        picture = labelled(image, f"{digit} ({100 * probability:.1f}%)", f"labelled {truth}")
        write_output(path, lambda f, picture=picture: picture.save(f, "PNG"), args.checkpoint)
        say(f"{path}: {digit} ({100 * probability:.1f}%), test image {index}, labelled {truth}")
    return 0


def _png(image):
    from PIL import Image  # noqa: PLC0415

    return Image.frombytes("L", (28, 28), bytes(image.contiguous().view(-1).tolist()))
