"""Stroke figures and dot counts: the global-shape half of the embedded base's pretraining.

Why: the grey-scene tasks (``shapes.py``) are about small compact objects, which one image token
can describe on its own, so a base trained only on them never learns to read a shape that spans
the whole image, and cannot be fine-tuned to classify one (a real image task such as scanned
handwriting). Here each image is one large hand-drawn-looking geometric figure (ring, cross, arc,
wave, polygon outline...) under a random affine distortion, stroke width, blur, brightness and
noise, and the question asks which of many figures it is; or it shows 0-9 dots to count, whose
numeral answers keep those answer tokens alive in the language model. Both need every image token
at once. Only generic geometric primitives are drawn: no digits, letters or other glyphs.
"""

import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fedvlm.data.example import VQAExample

IMAGE_SIZE = 64
FIGURE_QUESTION = "what figure is this?"
DOTS_QUESTION = "count the dots."
NUMERALS = tuple(str(n) for n in range(10))

Stroke = list[tuple[float, float]]  # a polyline in [-1, 1] coordinates, y down


def _arc(cx: float, cy: float, r: float, start: float, stop: float, n: int = 24) -> Stroke:
    angles = [start + (stop - start) * i / n for i in range(n + 1)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]


def _polygon(sides: int, turn: float = 0.0) -> Stroke:
    return _arc(0.0, 0.0, 0.8, turn - math.pi / 2, turn - math.pi / 2 + 2 * math.pi, sides)


SPIRAL_TURNS = np.linspace(0.5, 3.3 * math.pi, 48)
FIGURES: dict[str, list[Stroke]] = {
    "ring": [_arc(0, 0, 0.8, 0, 2 * math.pi)],
    "plus": [[(0, -0.8), (0, 0.8)], [(-0.8, 0), (0.8, 0)]],
    "cross": [[(-0.7, -0.7), (0.7, 0.7)], [(-0.7, 0.7), (0.7, -0.7)]],
    "bar": [[(0, -0.85), (0, 0.85)]],
    "line": [[(-0.85, 0), (0.85, 0)]],
    "slash": [[(-0.6, 0.8), (0.6, -0.8)]],
    "arc": [_arc(0, 0.3, 0.8, math.pi, 2 * math.pi)],
    "cup": [_arc(0, -0.3, 0.8, 0, math.pi)],
    "hook": [_arc(0.0, 0.0, 0.7, -math.pi / 2, math.pi)],
    "wedge": [[(-0.7, -0.7), (0, 0.7), (0.7, -0.7)]],
    "corner": [[(-0.6, -0.8), (-0.6, 0.7), (0.7, 0.7)]],
    "box": [_polygon(4, math.pi / 4)],
    "triangle": [_polygon(3)],
    "wave": [[(-0.85 + 1.7 * i / 32, 0.4 * math.sin(2 * math.pi * i / 16)) for i in range(33)]],
    "spiral": [[(0.08 * t * math.cos(t), 0.08 * t * math.sin(t)) for t in SPIRAL_TURNS]],
    "target": [_arc(0, 0, 0.8, 0, 2 * math.pi), _arc(0, 0, 0.12, 0, 2 * math.pi, 8)],
}
QUESTION_TYPES = ("figure", "dots")


def _canvas(rng: random.Random) -> tuple[np.ndarray, float]:
    """A dark, slightly graded background and the ink's brightness."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    base = rng.uniform(0.0, 0.3) + rng.uniform(-0.1, 0.1) * (xx - 0.5 + yy - 0.5)
    return base, rng.uniform(0.5, 1.0)


def _finish(rng: random.Random, image: np.ndarray, mask: Image.Image, ink: float) -> Image.Image:
    """Blur, ink, noise and a random grey tint, as ``shapes`` does for its scenes."""
    mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 2.5)))
    image = image + ink * np.asarray(mask, dtype=float) / 255
    nrng = np.random.default_rng(rng.getrandbits(32))
    image = image + nrng.normal(0.0, rng.uniform(0.0, 0.06), image.shape)
    grey = np.clip(image, 0, 1)[..., None] * np.array([rng.uniform(0.9, 1.0) for _ in range(3)])
    return Image.fromarray(np.rint(grey * 255).astype(np.uint8))


def figure_example(rng: random.Random) -> VQAExample:
    """One random figure, scaled, rotated, sheared and jittered as handwriting would be."""
    name = rng.choice(tuple(FIGURES))
    angle = rng.uniform(-0.35, 0.35)
    shear = rng.uniform(-0.3, 0.3)
    sx, sy = rng.uniform(0.45, 0.95), rng.uniform(0.45, 0.95)
    tx, ty = rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15)
    half = IMAGE_SIZE / 2

    def to_pixels(x: float, y: float) -> tuple[float, float]:
        x, y = (x + shear * y) * sx, y * sy
        x, y = x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)
        return half + half * (x + tx), half + half * (y + ty)

    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask)
    width = rng.randint(3, 9)
    for stroke in FIGURES[name]:
        points = [to_pixels(x + rng.gauss(0, 0.03), y + rng.gauss(0, 0.03)) for x, y in stroke]
        draw.line(points, fill=255, width=width, joint="curve")
    image, ink = _canvas(rng)
    return VQAExample(_finish(rng, image, mask, ink), FIGURE_QUESTION, name, "figure")


def dots_example(rng: random.Random) -> VQAExample:
    """0-9 non-overlapping dots anywhere in the image; the answer is their number as a numeral."""
    count = rng.randint(0, 9)
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask)
    centres: list[tuple[int, int]] = []
    radius = rng.randint(2, 4)
    while len(centres) < count:
        low, high = radius + 1, IMAGE_SIZE - radius - 2
        x, y = rng.randint(low, high), rng.randint(low, high)
        if all((x - a) ** 2 + (y - b) ** 2 > (2 * radius + 3) ** 2 for a, b in centres):
            centres.append((x, y))
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    image, ink = _canvas(rng)
    return VQAExample(_finish(rng, image, mask, ink), DOTS_QUESTION, NUMERALS[count], "dots")


def make_example(rng: random.Random, question_type: str) -> VQAExample:
    """One example of ``question_type`` (one of QUESTION_TYPES)."""
    if question_type == "figure":
        return figure_example(rng)
    if question_type == "dots":
        return dots_example(rng)
    raise ValueError(f"unknown question type {question_type!r}")


def vocabulary_text() -> list[str]:
    """The questions and answer words; answers also alone, so each is one BPE token."""
    words = [*FIGURES, *NUMERALS]
    return [FIGURE_QUESTION, DOTS_QUESTION, *words, " ".join(words)]
