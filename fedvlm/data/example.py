"""One visual question with its answer: the unit every task and loader produces."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class VQAExample:
    """An (image, question, answer) triple plus the fields evaluation groups by.

    Parameters
    ----------
    image : PIL.Image.Image
        RGB image; it never leaves the site.
    question : str
        The question asked about the image.
    answer : str
        The expected short answer; the loss covers only its tokens.
    question_type : str
        Group for per-question-type accuracy (e.g. ``presence``); empty if unknown.
    attributes : Mapping[str, str]
        Optional subgroup fields (``scanner``, ``sex``...) for per-subgroup accuracy.
    """

    image: Image.Image
    question: str
    answer: str
    question_type: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
