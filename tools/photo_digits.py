"""How well `infer` reads photo-like digits: MNIST test digits redrawn as
photos (enlarged, on paper, on colour gradients, with noise, in shade) and
read back through infer's own preparation of image files.

    python tools/photo_digits.py --checkpoint model_checkpoint.pth [--count 200]

Prints one row per kind of photo: how many were read right, and how many got
"no digit found" (all of them, for photos with no digit). --examples DIR also writes each kind's first photo there.
"""

import argparse
import io
import math
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mnist_hogwild.serving.images import class_probabilities, prepare_image  # noqa: E402
from mnist_hogwild.core.errors import InputError  # noqa: E402
from mnist_hogwild.learn import data  # noqa: E402
from mnist_hogwild.training import checkpoint  # noqa: E402

SIZE = 224  # pixels on a side, about a cropped phone photo of one digit


def ramp(g):
    """A linear ramp in [0, 1] across the picture, at a random angle."""
    angle = float(torch.rand(1, generator=g)) * 2 * math.pi
    y, x = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    t = x * math.cos(angle) + y * math.sin(angle)
    return (t - t.min()) / (t.max() - t.min())


def colour(g, low, high):
    return low + (high - low) * torch.rand(3, 1, 1, generator=g)


def photo(digit, kind, g):
    """DIGIT (uint8 28x28, light on dark) as an RGB photo of KIND, uint8 [3, S, S]."""
    alpha = torch.nn.functional.interpolate(
        digit[None, None].float() / 255, size=(SIZE, SIZE), mode="bilinear"
    )[0]
    paper, ink = torch.full((3, 1, 1), 235.0), torch.full((3, 1, 1), 25.0)
    noise = 0.0
    if kind == "paper":
        background = paper.expand(3, SIZE, SIZE)
    elif kind == "shade":  # paper lit from one side: white down to grey
        background = paper * (1 - 0.6 * ramp(g))
    else:  # "gradient", "gradient+noise", "colour ink": two colours across the picture
        t = ramp(g)
        background = colour(g, 120, 255) * (1 - t) + colour(g, 120, 255) * t
        noise = 0.0 if kind == "gradient" else 18.0
        if kind == "colour ink":
            ink = torch.tensor([30.0, 50.0, 170.0]).view(3, 1, 1)  # a blue pen
    picture = background * (1 - alpha) + ink * alpha
    picture = picture + noise * torch.randn(picture.shape, generator=g)
    return picture.round().clamp(0, 255).to(torch.uint8)


def png(picture):
    from PIL import Image  # noqa: PLC0415

    image = Image.frombytes("RGB", (SIZE, SIZE), bytes(picture.permute(1, 2, 0).flatten().tolist()))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="model_checkpoint.pth", metavar="PATH")
    p.add_argument("--data-dir", default="./data", metavar="DIR")
    p.add_argument("--count", type=int, default=200, help="digits per kind (default: 200)")
    p.add_argument("--examples", metavar="DIR", help="write each kind's first photo here")
    args = p.parse_args()
    model, _ = checkpoint.load_model(args.checkpoint)
    test = data.load_split(data.prepare(args.data_dir, "mnist", log=lambda m: None)["test"])
    print("| photo | read right | no digit found |\n| --- | ---: | ---: |")
    for kind in ("paper", "shade", "gradient", "gradient+noise", "colour ink", "no digit"):
        g = torch.Generator().manual_seed(0)
        right = empty = 0
        for i in range(args.count):
            if kind == "no digit":  # a noisy gradient with nothing on it: none should be read
                encoded = png(photo(torch.zeros_like(test.images[i]), "gradient+noise", g))
            else:
                encoded = png(photo(test.images[i], kind, g))
            if args.examples and i == 0:
                os.makedirs(args.examples, exist_ok=True)
                with open(os.path.join(args.examples, f"{kind.replace(' ', '-')}.png"), "wb") as f:
                    f.write(encoded)
            try:
                image = prepare_image(kind, "mnist", io.BytesIO(encoded))
            except InputError:
                empty += 1
                continue
            digit = int(class_probabilities(model, image[None], "mnist")[0].argmax())
            right += digit == int(test.labels[i])
        print(f"| {kind} | {right}/{args.count} | {empty} |", flush=True)


if __name__ == "__main__":
    main()
