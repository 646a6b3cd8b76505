"""Small real-image datasets for tests: scikit-learn's scanned handwritten digits, offline.

`load_digits` ships 1,797 real 8x8 scans inside the scikit-learn package (dev extra), so a
test can build site folders of real images without downloading anything.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from fedvlm.data.example import VQAExample
from fedvlm.data.imagefolder import write_imagefolder

QUESTION = "which digit is this?"
HOSPITALS = ("north", "south", "west")


def digit_examples(start: int, count: int) -> list[VQAExample]:
    """``count`` consecutive digits from ``start``, each tagged with a ``hospital`` attribute."""
    digits = load_digits()
    examples = []
    for i in range(start, start + count):
        pixels = np.rint(digits.images[i] * 255 / 16).astype(np.uint8)
        examples.append(
            VQAExample(
                image=Image.fromarray(pixels).convert("RGB"),
                question=QUESTION,
                answer=str(int(digits.target[i])),
                question_type="digit",
                attributes={"hospital": HOSPITALS[i % len(HOSPITALS)]},
            )
        )
    return examples


def write_digit_folder(path: Path, start: int, count: int, val_every: int = 4) -> Path:
    """An imagefolder of ``count`` digits, every ``val_every``-th in validation."""
    examples = digit_examples(start, count)
    return write_imagefolder(
        {
            "train": [e for i, e in enumerate(examples) if i % val_every],
            "validation": examples[::val_every],
        },
        path,
    )


def write_digit_sites(root: Path, sites: int = 3, per_site: int = 16) -> tuple[Path, Path]:
    """``root/sites/site-<i>`` folders and a ``root/heldout`` folder of unseen digits."""
    for i in range(sites):
        write_digit_folder(root / "sites" / f"site-{i}", i * per_site, per_site)
    heldout = write_imagefolder(
        {"validation": digit_examples(sites * per_site, per_site)}, root / "heldout"
    )
    return root / "sites", heldout
