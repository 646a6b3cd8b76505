"""Registry of the VLM families fedvlm supports, keyed by transformers ``model_type``.

A family says how an (image, question, answer) example becomes model inputs through the
checkpoint's processor and chat template, which tokens carry loss, where LoRA goes, which module
is the projector and how answers end. ``batching`` and ``lora`` dispatch through it, so a new
architecture is one entry here.
"""

import importlib.util

from transformers import PretrainedConfig, ProcessorMixin

from fedvlm.errors import ConfigError, FedVLMError
from fedvlm.families.base import IGNORE, TOKEN_KEYS, Encoded, Family, compute_device_dtype
from fedvlm.families.paligemma import PaliGemmaFamily
from fedvlm.families.qwen2_vl import QwenImageTextProcessor, QwenVLFamily

_QWEN_VISION = r"(qkv|proj|fc1|fc2|gate_proj|up_proj|down_proj)"

FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("llava", processor_classes=("LlavaProcessor",)),
        Family(
            "idefics3",
            language_model="text_model",
            vision_tower="vision_model",
            projector="connector",
            projector_sees_examples=False,
            end_of_answer="<end_of_utterance>",
            processor_classes=("Idefics3Processor",),
        ),
        Family(
            "smolvlm",  # SmolVLM2: Idefics3's layout, a processor that also handles video
            language_model="text_model",
            vision_tower="vision_model",
            projector="connector",
            projector_sees_examples=False,
            end_of_answer="<end_of_utterance>",
            processor_classes=("SmolVLMProcessor",),
            extra="smolvlm",
            requires=("num2words", "torchvision"),
        ),
        QwenVLFamily(
            "qwen2_vl",
            vision_tower="visual",
            vision_linears=_QWEN_VISION,
            projector="merger",
            projector_sees_examples=False,
            end_of_answer="<|im_end|>",
            processor_classes=("QwenImageTextProcessor", "Qwen2VLProcessor"),
        ),
        QwenVLFamily(
            "qwen2_5_vl",
            vision_tower="visual",
            vision_linears=_QWEN_VISION,
            projector="merger",
            projector_sees_examples=False,
            end_of_answer="<|im_end|>",
            processor_classes=("Qwen2_5_VLProcessor",),
        ),
        PaliGemmaFamily("paligemma", processor_classes=("PaliGemmaProcessor",)),
        Family(
            "gemma3",
            end_of_answer="<end_of_turn>",
            processor_classes=("Gemma3Processor",),
            nested_images=True,
        ),
    )
}


def family_for_model_type(model_type: str) -> Family:
    """The family of a checkpoint's ``config.model_type``.

    Raises
    ------
    ConfigError
        Naming ``base-model`` and the supported types, if the architecture is not supported.
    """
    if model_type not in FAMILIES:
        raise ConfigError(
            "base-model",
            f"model_type '{model_type}' is not a supported VLM family "
            f"(supported: {', '.join(sorted(FAMILIES))})",
        )
    family = FAMILIES[model_type]
    missing = [m for m in family.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise FedVLMError(
            f"model_type '{model_type}' needs {', '.join(missing)}: "
            f"pip install 'fedvlm[{family.extra}]'"
        )
    return family


def family_for_config(config: PretrainedConfig) -> Family:
    """The family of a loaded model's (or PEFT wrapper's) config."""
    return family_for_model_type(config.model_type)


def family_for_processor(processor: ProcessorMixin | QwenImageTextProcessor) -> Family:
    """The family whose inputs ``processor`` builds, found by the processor's class."""
    name = type(processor).__name__
    for family in FAMILIES.values():
        if name in family.processor_classes:
            return family
    raise FedVLMError(f"no VLM family encodes for processor class {name}")


__all__ = [
    "FAMILIES",
    "IGNORE",
    "TOKEN_KEYS",
    "Encoded",
    "Family",
    "QwenImageTextProcessor",
    "compute_device_dtype",
    "family_for_config",
    "family_for_model_type",
    "family_for_processor",
]
