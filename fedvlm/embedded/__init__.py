"""The embedded default model: a tiny pretrained LLaVA committed with the package.

``python -m fedvlm.embedded.build`` rebuilds it deterministically; ``EMBEDDED_MODEL_DIR`` is where
the committed copy lives.
"""

from pathlib import Path

EMBEDDED_MODEL_DIR: Path = Path(__file__).resolve().parent / "tiny-llava"
