"""Synthetic grey-scene VQA: the generic task the embedded base is pretrained on.

The base must learn low-level looking skills that any small-object task needs — is something
there, which side is it on, how many are there, how large is it, what shape is it — on images
whose look varies the way real acquisitions do: grey noisy backgrounds with smooth large-scale
clutter, varied brightness, contrast, noise and edge blur. Questions are worded about generic
"objects", never about any federated domain, so a federation still has to learn its own question
wording and image domain; LoRA then maps them onto skills that already exist. One question type
(``VARIANT_TYPE``) is held out of pretraining to measure how fast LoRA learns something new.
"""

import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fedvlm.data.example import VQAExample
from fedvlm.embedded import figures

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle")
NUMBERS = ("zero", "one", "two", "three")
SIZES = {"small": (5, 9), "large": (14, 21)}  # bounding-box side in pixels
QUESTIONS = {
    "presence": "are there any objects?",
    "position": "which side is the object on?",
    "count": "count the objects.",
    "size": "is the object small or large?",
    "shape": "what shape is the object?",
    "caption": "describe the objects.",
}
# Half the examples are captions: one forward pass then supervises every fact of the image
# (count, and each object's size, shape and side), which is what makes a tiny model learn to look
# within a few thousand steps.
# A third are whole-image figures and dot counts (``figures.py``): the global-shape skills.
PRETRAIN_TYPES = (
    "caption",
    "figure",
    "count",
    "caption",
    "dots",
    "position",
    "caption",
    "figure",
    "size",
    "caption",
    "figure",
    "presence",
)
VARIANT_TYPE = "left"  # "is the object on the left?" — never seen in pretraining
_VARIANT_QUESTION = "is the object on the left?"

# Every word the embedded tokenizer must know, including the federated radiograph task's
# questions and answers (written by another module; only its vocabulary matters here).
RADIOGRAPH_TEXT = (
    "is there a lesion?",
    "where is the lesion?",
    "how many lesions are there?",
    "how large is the lesion?",
    "yes no left right zero one two three small large",
)


def _background(rng: random.Random) -> np.ndarray:
    """Grey level, gradient, and clutter that is never an object.

    The clutter — large soft-edged ellipses, long thin bars, broad bumps — is what makes the
    tower learn "compact object" rather than "anything bright": real images have large
    structures and edges everywhere, and an object detector that fires on them transfers badly.
    """
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE + 0.5 / IMAGE_SIZE
    image = np.full((IMAGE_SIZE, IMAGE_SIZE), rng.uniform(0.0, 0.35))
    image += rng.uniform(-0.15, 0.15) * (xx - 0.5) + rng.uniform(-0.15, 0.15) * (yy - 0.5)
    for _ in range(rng.randint(0, 2)):  # large regions with a soft edge
        cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
        rx, ry = rng.uniform(0.3, 0.55), rng.uniform(0.3, 0.55)
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        image += rng.uniform(-0.25, 0.25) / (1 + np.exp((inside - 1) * rng.uniform(5, 20)))
    for _ in range(rng.randint(0, 2)):  # long thin bars, mostly near-vertical or near-horizontal
        angle = rng.choice((0.0, np.pi / 2)) + rng.uniform(-0.3, 0.3)
        offset = rng.uniform(0.1, 0.9)
        distance = np.abs((xx - offset) * np.cos(angle) + (yy - offset) * np.sin(angle))
        image += rng.uniform(0.05, 0.2) * np.exp(-((distance / rng.uniform(0.01, 0.05)) ** 2))
    for _ in range(rng.randint(0, 2)):  # broad bumps
        cx, cy = rng.uniform(0, 1), rng.uniform(0, 1)
        sx, sy = rng.uniform(0.2, 0.45), rng.uniform(0.2, 0.45)
        bump = np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
        image += rng.uniform(-0.15, 0.15) * bump
    return image


def _place(
    rng: random.Random, sizes: list[str], sides: list[str] | None
) -> list[tuple[str, str, int, int, int]] | None:
    """Non-overlapping (shape, size, x, y, side) boxes; ``sides`` pins each object's half."""
    boxes: list[tuple[str, str, int, int, int]] = []
    for i, size in enumerate(sizes):
        side = None if sides is None else sides[i]
        s = rng.randint(*SIZES[size])
        for _attempt in range(50):
            if side is None:
                x = rng.randint(1, IMAGE_SIZE - s - 1)
            else:  # centre clearly inside the asked half, away from the midline
                lo, hi = (4, IMAGE_SIZE // 2 - 4) if side == "left" else (IMAGE_SIZE // 2 + 4, 60)
                x = rng.randint(max(1, lo - s // 2), min(IMAGE_SIZE - s - 1, hi - s // 2))
            y = rng.randint(1, IMAGE_SIZE - s - 1)
            if all(
                x + s + 2 <= bx or bx + bs + 2 <= x or y + s + 2 <= by or by + bs + 2 <= y
                for _, _, bx, by, bs in boxes
            ):
                boxes.append((rng.choice(SHAPES), size, x, y, s))
                break
        else:
            return None
    return boxes


def _scene(
    rng: random.Random, sizes: list[str], sides: list[str] | None = None
) -> tuple[Image.Image, list[tuple[str, str, int, int, int]]]:
    """Render objects of ``sizes`` on a random grey background under a random acquisition."""
    boxes = None
    while boxes is None:
        boxes = _place(rng, sizes, sides)
    nrng = np.random.default_rng(rng.getrandbits(32))
    image = _background(rng)
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask)
    for shape, _, x, y, s in boxes:
        box = (x, y, x + s, y + s)
        if shape == "circle":
            draw.ellipse(box, fill=255)
        elif shape == "square":
            draw.rectangle(box, fill=255)
        else:
            draw.polygon([(x + s // 2, y), (x, y + s), (x + s, y + s)], fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 2.0)))
    image += rng.uniform(0.3, 0.7) * np.asarray(mask, dtype=float) / 255
    level = rng.uniform(0.1, 0.5)  # contrast pivot, like a scanner's window
    image = level + rng.uniform(0.5, 1.5) * (image - level) + rng.uniform(-0.1, 0.1)
    image += nrng.normal(0.0, rng.uniform(0.01, 0.08), image.shape)
    grey = np.clip(image, 0, 1)[..., None] * np.array([rng.uniform(0.9, 1.0) for _ in range(3)])
    return Image.fromarray(np.rint(grey * 255).astype(np.uint8)), boxes


def _sizes(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(tuple(SIZES)) for _ in range(count)]


def make_example(rng: random.Random, question_type: str) -> VQAExample:
    """One example of ``question_type`` (one of PRETRAIN_TYPES or VARIANT_TYPE)."""
    if question_type in figures.QUESTION_TYPES:
        return figures.make_example(rng, question_type)
    if question_type in ("count", "presence"):
        count = rng.randint(0, 3) if question_type == "count" else rng.choice((0, 0, 0, 1, 2, 3))
        image, _ = _scene(rng, _sizes(rng, count))
        answer = NUMBERS[count] if question_type == "count" else ("yes" if count else "no")
        return VQAExample(image, QUESTIONS[question_type], answer, question_type)
    if question_type == "caption":
        count = rng.randint(0, 3)
        sides = [rng.choice(("left", "right")) for _ in range(count)]
        image, boxes = _scene(rng, _sizes(rng, count), sides)
        described = sorted(zip(boxes, sides, strict=True), key=lambda pair: pair[0][2])
        words = [NUMBERS[count]] + [f"{b[1]} {b[0]} {side}" for b, side in described]
        return VQAExample(image, QUESTIONS["caption"], " ".join(words), "caption")
    side = rng.choice(("left", "right"))
    image, boxes = _scene(rng, _sizes(rng, 1), [side])
    shape, size = boxes[0][:2]
    if question_type == "position":
        return VQAExample(image, QUESTIONS["position"], side, "position")
    if question_type == "size":
        return VQAExample(image, QUESTIONS["size"], size, "size")
    if question_type == "shape":
        return VQAExample(image, QUESTIONS["shape"], shape, "shape")
    if question_type == VARIANT_TYPE:
        answer = "yes" if side == "left" else "no"
        return VQAExample(image, _VARIANT_QUESTION, answer, VARIANT_TYPE)
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
    questions = [*QUESTIONS.values(), _VARIANT_QUESTION, *RADIOGRAPH_TEXT[:-1]]
    words = [*SHAPES, *NUMBERS, *SIZES, *RADIOGRAPH_TEXT[-1].split()]
    return questions + words + [" ".join(words)] + figures.vocabulary_text()
