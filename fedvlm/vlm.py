"""Load the base VLM and its PEFT-wrapped form, once per process.

The same function loads the embedded tiny model (a committed folder) and a hub model on a GPU
node: both go through ``AutoModelForImageTextToText`` / ``AutoProcessor``. Hub ids are resolved
from the local cache only, unless downloads are explicitly allowed, so a site never hangs on a
network it does not have.
"""

import functools
import os
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from peft import PeftModel, prepare_model_for_kbit_training
from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedModel, ProcessorMixin

from fedvlm.adapter import Adapter, get_adapter_state
from fedvlm.embedded import EMBEDDED_MODEL_DIR
from fedvlm.errors import ModelNotFoundError
from fedvlm.families import family_for_model_type
from fedvlm.lora import LoraSettings, apply_lora
from fedvlm.runtime import ModelSettings

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
    runtime: ModelSettings | None = None,
    allow_download: bool = False,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a vision-language model and its processor, in eval mode.

    The checkpoint's ``model_type`` picks its family (``fedvlm.families``) first, so an
    unsupported architecture or a missing optional package fails before any weights load.
    ``runtime`` places the model (device, dtype, 4-bit base); it defaults to ``ModelSettings()``:
    CUDA in bfloat16/float16 where there is a GPU, float32 on CPU.
    """
    runtime = runtime or ModelSettings()
    path = resolve_model_path(name_or_path, allow_download=allow_download)
    family = family_for_model_type(AutoConfig.from_pretrained(path).model_type)
    device = runtime.torch_device()
    quantization = runtime.quantization_config()
    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=runtime.torch_dtype(),
        quantization_config=quantization,
        device_map={"": device.index or 0} if quantization else None,
    )
    if quantization is None:
        model = model.to(device)
    return model.eval(), family.load_processor(path)


@functools.lru_cache(maxsize=4)
def load_peft_model(
    name_or_path: str, lora: LoraSettings, *, runtime: ModelSettings | None = None
) -> tuple[PeftModel, ProcessorMixin]:
    """The base wrapped with a freshly initialised LoRA adapter, cached per process.

    Caching is safe because every round starts by overwriting the whole adapter with
    ``set_adapter_state``; it is what keeps the base from being reloaded per round. With
    ``gradient_checkpointing`` (or a 4-bit base) the base is prepared for memory-lean training
    before LoRA is applied.
    """
    runtime = runtime or ModelSettings()
    model, processor = load_base(name_or_path, runtime=runtime)
    if runtime.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=runtime.gradient_checkpointing
        )
    elif runtime.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = apply_lora(model, lora)
    _INITIAL_ADAPTERS[id(peft_model)] = get_adapter_state(peft_model)
    return peft_model, processor


# The seeded initial adapter of each cached model, taken before any training touches it.
_INITIAL_ADAPTERS: dict[int, Adapter] = {}


def initial_adapter(
    name_or_path: str, lora: LoraSettings, *, runtime: ModelSettings | None = None
) -> Adapter:
    """The seeded initial adapter of `load_peft_model(name_or_path, lora)` (a copy).

    The coordinator starts every run from it, not from the cached model's current weights,
    which a previous run in the same process (a test, a benchmark) may have trained.
    """
    model, _ = load_peft_model(name_or_path, lora, runtime=runtime)
    return {name: tensor.clone() for name, tensor in _INITIAL_ADAPTERS[id(model)].items()}
