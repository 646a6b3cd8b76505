"""What the coordinator evaluates the global adapter on, if anything, and how it says so.

A held-out figure means something only on data like the sites'. So: the imagefolder at
``heldout-path`` when one is given (checked whole before the first round, like a site
folder); the synthetic radiograph set only when the sites draw that synthetic task
(``site-data = "synthetic"``); otherwise nothing, and the sites' example-weighted validation
accuracy is the run's headline (fedvlm/ledger_schema.py).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvlm.config import RunSettings
from fedvlm.data.example import VQAExample
from fedvlm.data.imagefolder import read_imagefolder
from fedvlm.data.partition import heldout_set


@dataclass(frozen=True)
class CentralSet:
    """The coordinator's evaluation examples and the ledger's words for them."""

    examples: list[VQAExample]
    source: dict[str, Any]


def central_set(run: RunSettings) -> CentralSet | None:
    """The held-out set of this run, or None when only the sites can evaluate.

    Raises
    ------
    DataError
        ``heldout-path`` is not a valid imagefolder (every problem named by file and line).
    """
    if run.heldout_path:
        path = Path(run.heldout_path).expanduser().resolve()
        # Every example is evaluated, whatever its split field says.
        examples = [e for _, e in read_imagefolder(path, require_splits=False)]
        return CentralSet(
            examples, {"kind": "folder", "path": str(path), "examples": len(examples)}
        )
    if run.simulation.synthetic:
        examples = heldout_set(run.simulation.heldout_examples, seed=run.seed)
        return CentralSet(
            examples,
            {"kind": "synthetic", "path": None, "examples": len(examples), "seed": run.seed},
        )
    return None
