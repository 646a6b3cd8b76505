"""A starting adapter for tests in which LoRA must matter from the first step."""

import torch

from fedvlm.adapter import Adapter
from fedvlm.lora_factors import factor_of


def b_moved_off_zero(adapter: Adapter, seed: int, scale: float = 0.05) -> Adapter:
    """``adapter`` with Gaussian noise (std ``scale``, seeded) added to every LoRA B factor.

    PEFT starts B at zero: the adapter then changes no output and A gets no gradient on the
    first step. Moving B makes answers depend on the adapter and lets both factors train.
    """
    generator = torch.Generator().manual_seed(seed)
    return {
        k: t + scale * torch.randn(t.shape, generator=generator) if factor_of(k) == "B" else t
        for k, t in adapter.items()
    }
