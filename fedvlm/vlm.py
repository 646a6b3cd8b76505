"""Load the base VLM and its PEFT-wrapped form, once per process.

The same function loads the embedded tiny model (a committed folder) and a hub model on a GPU
node: both go through ``AutoModelForImageTextToText`` / ``AutoProcessor``. Hub ids are resolved
from the local cache only, unless downloads are explicitly allowed, so a site never hangs on a
network it does not have.
"""

import functools
import os
from pathlib import Path

import torch
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from peft import PeftModel
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from fedvlm.embedded import EMBEDDED_MODEL_DIR
from fedvlm.errors import ModelNotFoundError
from fedvlm.lora import LoraSettings, apply_lora

EMBEDDED = "embedded"


def resolve_model_path(name_or_path: str, *, allow_download: bool = False) -> str:
    """Return a local folder holding the model ``name_or_path``.

    ``"embedded"`` is the committed tiny model; an existing folder is used as is; anything else
    is a hub id looked up in the local Hugging Face cache. It is downloaded only if
    ``allow_download`` is true and ``HF_HUB_OFFLINE`` is unset.

    Raises
    ------
    ModelNotFoundError
        If the model is neither a local folder nor cached (the message names both).
    """
    if name_or_path == EMBEDDED:
        return str(EMBEDDED_MODEL_DIR)
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelNotFoundError(f"model folder '{name_or_path}' does not exist")
    offline = not allow_download or bool(os.environ.get("HF_HUB_OFFLINE"))
    try:
        return snapshot_download(name_or_path, local_files_only=offline)
    except (LocalEntryNotFoundError, OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"model '{name_or_path}' is not a local folder and not in the Hugging Face cache "
            f"'{constants.HF_HUB_CACHE}'; download it there first (or point base-model at a "
            f'folder), or use base-model = "{EMBEDDED}"'
        ) from err


def load_base(
    name_or_path: str = EMBEDDED,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    allow_download: bool = False,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a vision-language model and its processor, in eval mode.

    ``dtype`` defaults to float32 on CPU (the embedded model's training precision) and to the
    checkpoint's own dtype elsewhere.
    """
    path = resolve_model_path(name_or_path, allow_download=allow_download)
    device = device or "cpu"
    if dtype is None and device == "cpu":
        dtype = torch.float32
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or "auto")
    processor = AutoProcessor.from_pretrained(path)
    return model.to(device).eval(), processor


@functools.lru_cache(maxsize=4)
def load_peft_model(
    name_or_path: str, lora: LoraSettings, *, device: str | None = None
) -> tuple[PeftModel, ProcessorMixin]:
    """The base wrapped with a freshly initialised LoRA adapter, cached per process.

    Caching is safe because every round starts by overwriting the whole adapter with
    ``set_adapter_state``; it is what keeps the base from being reloaded per round.
    """
    model, processor = load_base(name_or_path, device=device)
    return apply_lora(model, lora), processor
