"""Synthetic chest-film-like VQA task whose answers are known by construction.

Every image is drawn from a recorded :class:`Scene` (where each lesion is, how large), and the
answer is read off that scene, never off the pixels. The acquisition (contrast, noise, intensity
offset) changes only the look, which is what lets sites differ in "scanner" without the labels
becoming ambiguous. The question and answer strings are fixed: the embedded tokenizer was trained
on exactly these words.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fedvlm.data.example import VQAExample
from fedvlm.errors import ConfigError

QUESTION_TYPES: tuple[str, ...] = ("presence", "location", "count", "size")
QUESTIONS: dict[str, str] = {
    "presence": "is there a lesion?",
    "location": "where is the lesion?",
    "count": "how many lesions are there?",
    "size": "how large is the lesion?",
}
ANSWERS: dict[str, tuple[str, ...]] = {
    "presence": ("no", "yes"),
    "location": ("left", "right"),
    "count": ("zero", "one", "two", "three"),
    "size": ("small", "large"),
}
MAX_LESIONS = 3

# Acquisition range a site may be given (see skewed_acquisition). The lesion peak (>= 0.6 before
# contrast) stays >= 4.4 noise standard deviations above its surroundings at the worst corner
# (contrast 0.6, noise 0.081), so every lesion remains visible.
CONTRAST_SPREAD = 0.4  # contrast in [1 - 0.4, 1 + 0.4]
NOISE_SPREAD_LOG2 = 0.7  # noise in [0.05 / 1.62, 0.05 * 1.62]
INTENSITY_SPREAD = 0.1  # intensity offset in [-0.1, 0.1]

# Geometry, as fractions of the image side. Small and large blobs differ 2.5x in width, and
# lesion centres are kept at least (radius_a + radius_b + gap) apart, so count and size are never
# ambiguous. Centres stay inside the lung fields, clear of the midline.
_SMALL_SIGMA = (0.022, 0.027)
_LARGE_SIGMA = (0.060, 0.068)
_RADIUS_PER_SIGMA = 2.0
_GAP = 0.04
_X_RANGE = {"left": (0.18, 0.38), "right": (0.62, 0.82)}
_Y_RANGE = (0.24, 0.76)
_PEAK = (0.6, 0.75)
_TISSUE_LEVEL = 0.3  # grey level the contrast pivots around


@dataclass(frozen=True)
class Acquisition:
    """How a scanner renders a scene: changes the look, never the answer.

    Parameters
    ----------
    contrast : float
        Gain around mid-grey; below 1 flattens, above 1 sharpens. Must be > 0.
    noise : float
        Standard deviation of additive Gaussian pixel noise (image range is [0, 1]). Must be >= 0.
    intensity : float
        Global brightness offset added to every pixel.
    """

    contrast: float = 1.0
    noise: float = 0.05
    intensity: float = 0.0

    def __post_init__(self) -> None:
        if not self.contrast > 0:
            raise ConfigError("contrast", f"must be > 0, got {self.contrast}")
        if not self.noise >= 0:
            raise ConfigError("noise", f"must be >= 0, got {self.noise}")


@dataclass(frozen=True)
class Lesion:
    """One Gaussian blob; coordinates and sigma are fractions of the image side."""

    x: float
    y: float
    sigma: float
    peak: float
    size: str  # "small" or "large"

    @property
    def side(self) -> str:
        """Image half holding the centre (image left, as displayed)."""
        return "left" if self.x < 0.5 else "right"

    @property
    def radius(self) -> float:
        """Extent used to keep blobs apart."""
        return _RADIUS_PER_SIGMA * self.sigma


@dataclass(frozen=True)
class Scene:
    """What an image shows; the ground truth every answer is derived from."""

    lesions: tuple[Lesion, ...]

    def answer(self, question_type: str) -> str:
        """Answer to a question of ``question_type`` about this scene."""
        if question_type not in QUESTION_TYPES:
            raise ValueError(f"unknown question type {question_type!r}")
        if question_type not in valid_question_types(len(self.lesions)):
            raise ValueError(f"{question_type!r} needs exactly one lesion, scene has {self}")
        n = len(self.lesions)
        if question_type == "presence":
            return ANSWERS["presence"][int(n > 0)]
        if question_type == "count":
            return ANSWERS["count"][n]
        if question_type == "location":
            return self.lesions[0].side
        return self.lesions[0].size


def valid_question_types(num_lesions: int) -> tuple[str, ...]:
    """Question types that have one unambiguous answer for a scene with this many lesions."""
    if num_lesions == 1:
        return QUESTION_TYPES
    return ("presence", "count")


def draw_scene(rng: np.random.Generator, num_lesions: int) -> Scene:
    """Place ``num_lesions`` well separated lesions of random size and side.

    Placement is rejection-sampled, restarting the scene when early lesions leave no room; the
    ranges leave room for three large lesions, so it succeeds well within the attempt limit.
    """
    if not 0 <= num_lesions <= MAX_LESIONS:
        raise ValueError(f"num_lesions must be in [0, {MAX_LESIONS}], got {num_lesions}")
    for _scene_attempt in range(1000):
        lesions = _place(rng, num_lesions)
        if lesions is not None:
            return Scene(tuple(lesions))
    raise RuntimeError("could not place lesions apart")  # pragma: no cover - geometry has room


def _place(rng: np.random.Generator, num_lesions: int) -> list[Lesion] | None:
    """One try at a full scene; ``None`` when early lesions left no room for a later one."""
    lesions: list[Lesion] = []
    for _ in range(num_lesions):
        size = ("small", "large")[int(rng.integers(2))]
        sigma = float(rng.uniform(*(_SMALL_SIGMA if size == "small" else _LARGE_SIGMA)))
        peak = float(rng.uniform(*_PEAK))
        for _attempt in range(50):
            side = ("left", "right")[int(rng.integers(2))]
            x = float(rng.uniform(*_X_RANGE[side]))
            y = float(rng.uniform(*_Y_RANGE))
            clear = all(
                np.hypot(x - o.x, y - o.y) >= o.radius + _RADIUS_PER_SIGMA * sigma + _GAP
                for o in lesions
            )
            if clear:
                lesions.append(Lesion(x=x, y=y, sigma=sigma, peak=peak, size=size))
                break
        else:
            return None
    return lesions


def _anatomy(size: int) -> np.ndarray:
    """Noise-free background: dark field, soft body silhouette, two darker lung fields."""
    yy, xx = np.mgrid[0:size, 0:size] / size + 0.5 / size
    image = np.full((size, size), 0.08)
    body = ((xx - 0.5) / 0.44) ** 2 + ((yy - 0.55) / 0.5) ** 2
    image += 0.27 / (1 + np.exp((body - 1) * 12))  # soft-edged torso
    for cx in (0.28, 0.72):
        lung = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2
        image -= 0.1 / (1 + np.exp((lung - 1) * 10))
    spine = np.exp(-(((xx - 0.5) / 0.035) ** 2))
    image += 0.12 * spine * (body < 1)
    return image


def render(
    scene: Scene, acquisition: Acquisition, rng: np.random.Generator, image_size: int = 64
) -> Image.Image:
    """Draw ``scene`` as a grey RGB image as the given scanner would."""
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size + 0.5 / image_size
    image = _anatomy(image_size)
    for lesion in scene.lesions:
        r2 = (xx - lesion.x) ** 2 + (yy - lesion.y) ** 2
        image = image + lesion.peak * np.exp(-r2 / (2 * lesion.sigma**2))
    image = _TISSUE_LEVEL + acquisition.contrast * (image - _TISSUE_LEVEL) + acquisition.intensity
    image = image + rng.normal(0.0, acquisition.noise, image.shape)
    grey = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1))  # uint8 HxWx3 is RGB


def make_example(
    rng: np.random.Generator,
    *,
    num_lesions: int,
    question_type: str,
    acquisition: Acquisition,
    image_size: int = 64,
) -> VQAExample:
    """Draw a scene with ``num_lesions`` lesions and ask one question about it.

    The answer comes from the drawn scene. ``location`` and ``size`` are only valid for exactly
    one lesion (otherwise "the lesion" is ambiguous) and raise ``ValueError`` if asked otherwise.
    The ``lesion_count`` attribute lets evaluation group accuracy by scene difficulty.
    """
    if question_type not in valid_question_types(num_lesions):
        raise ValueError(f"question type {question_type!r} is not valid for {num_lesions} lesions")
    scene = draw_scene(rng, num_lesions)
    return VQAExample(
        image=render(scene, acquisition, rng, image_size),
        question=QUESTIONS[question_type],
        answer=scene.answer(question_type),
        question_type=question_type,
        attributes={"lesion_count": str(num_lesions)},
    )


def make_examples_with_counts(
    rng: np.random.Generator,
    lesion_counts: Sequence[int],
    acquisitions: Sequence[Acquisition],
    image_size: int = 64,
) -> list[VQAExample]:
    """One example per (lesion count, acquisition), question type uniform among the valid ones."""
    examples = []
    for count, acquisition in zip(lesion_counts, acquisitions, strict=True):
        types = valid_question_types(int(count))
        question_type = types[int(rng.integers(len(types)))]
        examples.append(
            make_example(
                rng,
                num_lesions=int(count),
                question_type=question_type,
                acquisition=acquisition,
                image_size=image_size,
            )
        )
    return examples


def make_examples(
    n: int,
    *,
    seed: int,
    lesion_probs: Sequence[float] | None = None,
    acquisition: Acquisition | None = None,
    image_size: int = 64,
) -> list[VQAExample]:
    """``n`` examples from one scanner, deterministic in ``seed``.

    Parameters
    ----------
    n : int
        Number of examples.
    seed : int
        Seed of the numpy Generator; the same seed gives identical images and questions.
    lesion_probs : sequence of float, optional
        Probability of 0, 1, 2, 3 lesions; uniform if omitted. It drives every answer.
    acquisition : Acquisition, optional
        Scanner look; neutral if omitted.
    image_size : int
        Side of the square image in pixels.
    """
    probs = (
        np.full(MAX_LESIONS + 1, 1 / (MAX_LESIONS + 1)) if lesion_probs is None else lesion_probs
    )
    probs = np.asarray(probs, dtype=float)
    if probs.shape != (MAX_LESIONS + 1,) or (probs < 0).any() or not np.isclose(probs.sum(), 1):
        raise ValueError(f"lesion_probs must be {MAX_LESIONS + 1} probabilities summing to 1")
    rng = np.random.default_rng(seed)
    counts = rng.choice(MAX_LESIONS + 1, size=n, p=probs)
    acquisitions = [acquisition or Acquisition()] * n
    return make_examples_with_counts(rng, counts, acquisitions, image_size)


def skewed_acquisition(rng: np.random.Generator, skew: float) -> Acquisition:
    """A random scanner, ``skew`` in [0, 1] scaling how far it may be from neutral.

    ``skew = 0`` returns the neutral :class:`Acquisition` (identical scanners); ``skew = 1``
    spans the full range, still inside the bounds where lesions stay visible. Three uniform draws
    are consumed whatever the skew, so a caller's later draws do not shift with it.
    """
    u_contrast, u_noise, u_intensity = rng.uniform(-1.0, 1.0, size=3)
    neutral = Acquisition()
    return Acquisition(
        contrast=neutral.contrast + skew * CONTRAST_SPREAD * float(u_contrast),
        noise=neutral.noise * 2.0 ** (skew * NOISE_SPREAD_LOG2 * float(u_noise)),
        intensity=neutral.intensity + skew * INTENSITY_SPREAD * float(u_intensity),
    )
