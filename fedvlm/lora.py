"""LoRA settings and their application to a base VLM.

Only the language model's attention and MLP projections get LoRA: on LLaVA-style models the vision
tower reuses the same layer names, so the target is a regex anchored on ``language_model``. The
multimodal projector is small and domain-specific, so it is trained in full (PEFT
``modules_to_save``) unless ``train_projector`` is off.
"""

from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from fedvlm.errors import ConfigError

LANGUAGE_MODEL_LINEARS = (
    r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)
# Names the projector has in the architectures transformers ships (LLaVA, Idefics3/SmolVLM).
PROJECTOR_NAMES = ("multi_modal_projector", "connector")


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
    target_modules : str
        Regex (full match) of the module names that receive LoRA.
    train_projector : bool
        Also train the multimodal projector in full (``train-projector``).
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str = LANGUAGE_MODEL_LINEARS
    train_projector: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError("lora-rank", f"must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise ConfigError("lora-alpha", f"must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("lora-dropout", f"must be in [0, 1), got {self.dropout!r}")


def _projector_name(model: PreTrainedModel) -> str:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for candidate in PROJECTOR_NAMES:
        if candidate in names:
            return candidate
    raise ConfigError(
        "train-projector", f"no projector module ({', '.join(PROJECTOR_NAMES)}) in this model"
    )


def apply_lora(model: PreTrainedModel, settings: LoraSettings, *, seed: int = 0) -> PeftModel:
    """Wrap ``model`` with a LoRA adapter whose initial weights depend only on ``seed``.

    The LoRA ``A`` matrices are drawn from torch's global RNG; seeding a forked RNG makes every
    site and the coordinator build bit-identical initial adapters without disturbing the caller's
    random stream.
    """
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        modules_to_save=[_projector_name(model)] if settings.train_projector else None,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    peft_model.eval()
    return peft_model
