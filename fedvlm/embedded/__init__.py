"""The embedded default model: a tiny pretrained LLaVA committed with the package.

``python -m fedvlm.embedded.build`` rebuilds it deterministically; ``EMBEDDED_MODEL_DIR`` is where
the committed copy lives.
"""

import sys
from pathlib import Path

_RELATIVE = Path("fedvlm") / "embedded" / "tiny-llava"
_WEIGHTS = "model.safetensors"


def _find_model_dir() -> Path:
    """The committed model folder that actually holds the weights.

    Flower ships an app to its processes as a FAB, which packs only code and text files
    (.py, .toml, .md, .json...), so the copy of this package that `flwr run` extracts has the
    model's configs but no `model.safetensors`. The weights are then taken from the same
    folder in another copy of the package on `sys.path` (the checkout, which our launchers
    put on PYTHONPATH and `pip install -e .` puts in site-packages).
    """
    here = Path(__file__).resolve().parent / "tiny-llava"
    if (here / _WEIGHTS).is_file():
        return here
    for entry in sys.path:
        candidate = Path(entry or ".").resolve() / _RELATIVE
        if (candidate / _WEIGHTS).is_file():
            return candidate
    return here


EMBEDDED_MODEL_DIR: Path = _find_model_dir()
