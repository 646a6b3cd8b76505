"""Synthetic coloured-shapes VQA: the generic task the embedded base is pretrained on.

The base must learn to *look* (shape, colour, position, count, size) and to answer with the
short words the federated task also uses (yes/no, left/right, zero..three, small/large), so that
LoRA only has to map a new domain onto skills that already exist. One question type
(``VARIANT_TYPE``) is held out of pretraining to measure how fast LoRA learns something new.
"""

import random

from PIL import Image, ImageDraw

from fedvlm.data.example import VQAExample

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}
NUMBERS = ("zero", "one", "two", "three")
PRETRAIN_TYPES = ("caption", "shape", "colour", "position", "count", "size", "presence")
VARIANT_TYPE = "left"  # "is the shape on the left?" — never seen in pretraining

# Every word the embedded tokenizer must know, including the federated radiograph task's
# questions and answers (written by another module; only its vocabulary matters here).
RADIOGRAPH_TEXT = (
    "is there a lesion?",
    "where is the lesion?",
    "how many lesions are there?",
    "how large is the lesion?",
    "yes no left right zero one two three small large",
)


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)


def _scene(rng: random.Random, count: int, size: str) -> tuple[Image.Image, list[tuple]]:
    """Draw ``count`` same-size shapes on a noisy dark background; return image and objects."""
    shade = rng.randint(0, 60)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (shade, shade, shade))
    draw = ImageDraw.Draw(image)
    side = rng.randint(22, 28) if size == "large" else rng.randint(8, 12)
    objects = []
    for _ in range(count):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        x = rng.randint(1, IMAGE_SIZE - side - 1)
        y = rng.randint(1, IMAGE_SIZE - side - 1)
        _draw(draw, shape, (x, y, x + side, y + side), COLOURS[colour])
        objects.append((shape, colour, x + side / 2, y + side / 2))
    return image, objects


def _position(cx: float, cy: float) -> str:
    dx, dy = cx - IMAGE_SIZE / 2, cy - IMAGE_SIZE / 2
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def make_example(rng: random.Random, question_type: str) -> VQAExample:
    """One example of ``question_type`` (one of PRETRAIN_TYPES or VARIANT_TYPE)."""
    size = rng.choice(("small", "large"))
    if question_type == "count":
        count = rng.randint(0, 3)
        image, _ = _scene(rng, count, "small")
        return VQAExample(image, "how many shapes are there?", NUMBERS[count], "count")
    if question_type == "presence":
        image, objects = _scene(rng, rng.randint(0, 2), size)
        target = rng.choice(SHAPES)
        answer = "yes" if any(o[0] == target for o in objects) else "no"
        return VQAExample(image, f"is there a {target}?", answer, "presence")
    image, objects = _scene(rng, 1, size)
    shape, colour, cx, cy = objects[0]
    if question_type == "caption":  # dense supervision: every attribute in one answer
        answer = f"{size} {colour} {shape} {_position(cx, cy)}"
        return VQAExample(image, "describe the shape.", answer, "caption")
    if question_type == "shape":
        return VQAExample(image, "what shape is it?", shape, "shape")
    if question_type == "colour":
        return VQAExample(image, "what colour is the shape?", colour, "colour")
    if question_type == "position":
        return VQAExample(image, "where is the shape?", _position(cx, cy), "position")
    if question_type == "size":
        return VQAExample(image, "how large is the shape?", size, "size")
    if question_type == VARIANT_TYPE:
        answer = "yes" if cx < IMAGE_SIZE / 2 else "no"
        return VQAExample(image, "is the shape on the left?", answer, VARIANT_TYPE)
    raise ValueError(f"unknown question type {question_type!r}")


def make_examples(
    n: int, seed: int, question_types: tuple[str, ...] = PRETRAIN_TYPES
) -> list[VQAExample]:
    """``n`` examples cycling through ``question_types``, fully determined by ``seed``."""
    rng = random.Random(seed)
    return [make_example(rng, question_types[i % len(question_types)]) for i in range(n)]


def vocabulary_text() -> list[str]:
    """Every question and answer string the tokenizer should encode compactly.

    Answers follow the assistant tag directly, without a leading space, so each answer word also
    appears alone on its own line: byte-level BPE then gives it a single token.
    """
    questions = [
        "how many shapes are there?",
        "describe the shape.",
        "what shape is it?",
        "what colour is the shape?",
        "where is the shape?",
        "how large is the shape?",
        "is the shape on the left?",
        *(f"is there a {s}?" for s in SHAPES),
        *RADIOGRAPH_TEXT[:-1],
    ]
    words = [*SHAPES, *COLOURS, *NUMBERS, "top", "bottom", *RADIOGRAPH_TEXT[-1].split()]
    return questions + words + [" ".join(words)]
