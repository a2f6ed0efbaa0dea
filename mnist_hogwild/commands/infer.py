"""The `infer` command: what digit does the model see?

With image files (PNG, JPEG, ... any size, colour or grey, dark or light
background), it prints each file's digit and probability, and the next two. Without, it picks
--num-samples random test images and writes each as a PNG named by its
predicted digit into --out-dir (the course's next assignment).

Images are prepared as MNIST's were (serving/images.py, which serve shares).
"""

import os
import sys

import torch

from mnist_hogwild.training import checkpoint
from mnist_hogwild.learn import data
from mnist_hogwild.core.errors import InputError
from mnist_hogwild.commands.output import write_output
from mnist_hogwild.serving.images import class_probabilities, prepare_image
from mnist_hogwild.core.loglines import say

ZOOM = 8  # the pictures infer writes: each of the 28x28 pixels as 8x8


def run_command(args):
    model, state = checkpoint.load_model(args.checkpoint)
    dataset = state["config"].get("dataset", "mnist")
    if args.images:
        return classify_files(model, dataset, args.images, args.show, args.checkpoint)
    return classify_test_images(model, dataset, args)


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
