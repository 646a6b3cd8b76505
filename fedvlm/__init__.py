"""fedvlm: federated, privacy-preserving LoRA fine-tuning of vision-language models.

This package is the shared core that both sides of a federation import: the VLM and its
adapter, tasks and data, typed configuration, the message contract and the CLI. It imports
no other package of the project (see DESIGN.md).
"""

__version__ = "0.1.0"
