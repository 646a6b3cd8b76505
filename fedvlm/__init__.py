"""fedvlm: federated, privacy-preserving LoRA fine-tuning of vision-language models.

This package is the shared core that both sides of a federation import: the VLM and its
adapter, tasks and data, typed configuration and the message contract. It is the bottom
layer: it imports no other package of the project (`[tool.importlinter]` in pyproject.toml).
"""

__version__ = "0.1.0"
