"""LoRA settings and their application to a base VLM.

By default only the language model's attention and MLP projections get LoRA: on most VLMs the
vision tower reuses the same layer names, so the target is a regex anchored on the family's
decoder module (``fedvlm.families``); ``vision`` adds the vision encoder's linears. The
multimodal projector is domain-specific, so it is trained in full (PEFT ``modules_to_save``)
unless ``train_projector`` is off.
"""

import functools
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from transformers import PreTrainedModel

from fedvlm.errors import ConfigError
from fedvlm.families import family_for_config


@dataclass(frozen=True)
class LoraSettings:
    """What every site and the coordinator must agree on to build the same adapter.

    Parameters
    ----------
    rank : int
        LoRA rank ``r`` (``lora-rank``); adapter size grows linearly with it.
    alpha : int
        LoRA scaling numerator (``lora-alpha``); the update is scaled by ``alpha / rank``.
    dropout : float
        Dropout on the LoRA branch (``lora-dropout``), in [0, 1).
    target_modules : str | None
        Regex (full match) of the module names that receive LoRA; ``None`` takes the model
        family's default (its language model's attention and MLP linears).
    train_projector : bool
        Also train the multimodal projector in full (``train-projector``).
    vision : bool
        Also put LoRA on the vision encoder's linears (``lora-vision``); ignored when
        ``target_modules`` is given.
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | None = None
    train_projector: bool = True
    vision: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError("lora-rank", f"must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise ConfigError("lora-alpha", f"must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("lora-dropout", f"must be in [0, 1), got {self.dropout!r}")


def _projector_name(model: PreTrainedModel, name: str) -> str:
    if not any(full.rsplit(".", 1)[-1] == name for full, _ in model.named_modules()):
        raise ConfigError("train-projector", f"no projector module '{name}' in this model")
    return name


def apply_lora(model: PreTrainedModel, settings: LoraSettings, *, seed: int = 0) -> PeftModel:
    """Wrap ``model`` with a LoRA adapter whose initial weights depend only on ``seed``.

    The LoRA ``A`` matrices are drawn from torch's global RNG; seeding a forked RNG makes every
    site and the coordinator build bit-identical initial adapters without disturbing the caller's
    random stream.
    """
    family = family_for_config(model.config)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules or family.lora_targets(vision=settings.vision),
        modules_to_save=[_projector_name(model, family.projector)]
        if settings.train_projector
        else None,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    _trained_copies_in_float32(peft_model)
    peft_model.eval()
    return peft_model


def _trained_copies_in_float32(model: PeftModel) -> None:
    """Keep the fully trained projector copy in float32 on a bfloat16/float16 base.

    PEFT already keeps LoRA weights in float32; the projector copy would inherit the base's
    half precision, where AdamW's small updates round away and which a Flower ``ArrayRecord``
    (numpy) cannot hold. Its inputs are cast up and its output back to the base's dtype, so the
    rest of the model is untouched. A float32 base (the CPU default) is left exactly as it is.
    """
    for wrapper in model.modules():
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        for copy in wrapper.modules_to_save.values():
            dtypes = {p.dtype for p in copy.parameters() if p.is_floating_point()}
            if dtypes <= {torch.float32}:
                continue
            (base_dtype,) = dtypes
            copy.float()
            copy.register_forward_pre_hook(_cast_inputs, with_kwargs=True)
            copy.register_forward_hook(functools.partial(_cast_output, dtype=base_dtype))


def _as(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def _cast_inputs(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return tuple(_as(a, torch.float32) for a in args), {
        k: _as(v, torch.float32) for k, v in kwargs.items()
    }


def _cast_output(module: torch.nn.Module, args: tuple, output, *, dtype: torch.dtype):
    return _as(output, dtype)
