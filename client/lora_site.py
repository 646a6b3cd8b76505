"""What LoRA-aware strategies change at a site: its rank, frozen A factors, what it sends.

- **Heterogeneous ranks** (strategies ``hetlora``, ``flora``): a site may declare a smaller
  LoRA rank than the run's in its node config (``lora-rank``). The global adapter always has
  the run's rank, the largest; the site loads its first ``r`` components, trains them, and
  sends an update of rank ``r`` (zero-padded back to the global's shapes when the
  coordinator only sums updates: secure aggregation, client-level DP). Its ``lora_alpha``
  scales with its rank, so ``B @ A`` means the same weight change at every site.
- **FFA-LoRA** (``freeze-lora-a`` in the train config): every LoRA A factor is frozen at the
  shared initialisation the global carries, and only the other tensors (B factors,
  projector) are sent: about half the bytes.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from peft import PeftModel

from fedvlm import contract
from fedvlm.adapter import Adapter, adapter_parameters
from fedvlm.errors import ConfigError
from fedvlm.lora import LoraSettings
from fedvlm.lora_factors import exchanged_keys, factor_of, pad_to_shapes, truncate_to_rank
from privacy.secagg.settings import SecureAggregationSettings
from privacy.settings import PrivacySettings
from strategies import SITE_RANK_STRATEGIES

SITE_RANK = "lora-rank"  # node_config key


def site_lora(
    run_lora: LoraSettings, node_config: Mapping[str, Any], strategy: str
) -> LoraSettings:
    """The LoRA settings this site trains with: the run's, at the rank its node declares.

    Raises
    ------
    ConfigError
        Naming ``lora-rank``, if the node's rank is not an integer in ``[1, run rank]``, or
        is below the run's rank under a strategy that needs every site at the run's rank
        (the message names both keys: before, such a site's update was only rejected at the
        coordinator as a shape mismatch).
    """
    rank = node_config.get(SITE_RANK, run_lora.rank)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= run_lora.rank:
        raise ConfigError(
            SITE_RANK,
            f"node config: expected an integer from 1 to the run's lora-rank ({run_lora.rank}, "
            f"the global adapter's rank), got {rank!r}",
        )
    if rank < run_lora.rank and strategy.strip().lower() not in SITE_RANK_STRATEGIES:
        raise ConfigError(
            SITE_RANK,
            f"node config lora-rank={rank} is below the run's lora-rank={run_lora.rank}; a "
            f"smaller site rank needs run-config strategy "
            f"{' or '.join(SITE_RANK_STRATEGIES)}, this run uses strategy={strategy!r}. "
            f"Remove lora-rank from this node's --node-config, or run one of those strategies",
        )
    return at_rank(run_lora, rank)


def at_rank(lora: LoraSettings, rank: int) -> LoraSettings:
    """``lora`` at ``rank``, with ``alpha`` scaled so that ``alpha / rank`` is unchanged.

    PEFT scales the LoRA product by ``alpha / rank``; keeping that constant makes the first
    ``rank`` components of the global adapter mean the same weight change at this site.
    """
    if rank == lora.rank:
        return lora
    alpha = lora.alpha * rank / lora.rank
    return replace(lora, rank=rank, alpha=int(alpha) if alpha.is_integer() else alpha)


def truncate(adapter: Adapter, rank: int) -> Adapter:
    """The first ``rank`` LoRA components of ``adapter`` (what a site of that rank loads)."""
    as_numpy = truncate_to_rank({k: t.numpy() for k, t in adapter.items()}, rank)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in as_numpy.items()}


def outgoing(update: Adapter, global_adapter: Adapter, *, freeze_a: bool, pad: bool) -> Adapter:
    """The part of a site's update it sends.

    Parameters
    ----------
    update : Adapter
        Local minus starting adapter, at the site's rank.
    global_adapter : Adapter
        The global adapter received (its shapes are the padding target).
    freeze_a : bool
        FFA-LoRA: send only the `exchanged_keys` (the A factors did not change).
    pad : bool
        Zero-pad LoRA factors to the global's rank (secure aggregation).
    """
    names = exchanged_keys(update) if freeze_a else list(update)
    sent = {name: update[name] for name in names}
    if not pad:
        return sent
    shapes = {name: tuple(global_adapter[name].shape) for name in sent}
    padded = pad_to_shapes({k: t.numpy() for k, t in sent.items()}, shapes)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in padded.items()}


def summed_by_coordinator(run_config: Mapping[str, Any]) -> bool:
    """Whether the coordinator only adds the updates up (secure aggregation, client-level DP).

    Then every site's update must have the global adapter's shapes, so a site of smaller
    rank zero-pads its factors (`outgoing` with ``pad=True``).
    """
    secure = SecureAggregationSettings.from_config(run_config).enabled
    return secure or PrivacySettings.from_config(run_config).client is not None


def freezes_a(train_config: Mapping[str, Any]) -> bool:
    """Whether the coordinator asked this round to freeze the LoRA A factors (FFA-LoRA)."""
    return bool(train_config.get(contract.FREEZE_LORA_A, False))


@contextmanager
def frozen_lora_a(model: PeftModel, freeze: bool) -> Iterator[None]:
    """Keep every LoRA A factor out of training (``requires_grad`` off) inside the block.

    The PEFT model is cached per process and shared by rounds whose strategy may differ,
    so the previous flags are restored on exit.
    """
    frozen = [p for k, p in adapter_parameters(model).items() if freeze and factor_of(k) == "A"]
    previous = [p.requires_grad for p in frozen]
    for param in frozen:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in zip(frozen, previous, strict=True):
            param.requires_grad_(flag)
