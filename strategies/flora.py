"""Heterogeneous LoRA ranks by exact stacking (FLoRA, Wang et al., NeurIPS 2024)."""

from collections.abc import Sequence

import numpy as np

from fedvlm.lora_factors import (
    factor_of,
    lora_pairs,
    refactor_by_importance,
    stack_factors,
    truncate_to_rank,
)
from strategies.base import weighted_mean
from strategies.fedavg import FedAvg
from strategies.validation import AcceptedUpdate, TensorSpec, variable_rank_spec


class FLoRA(FedAvg):
    """Stack the sites' LoRA factors so the global product is exactly the mean product.

    Site ``i`` of rank ``r_i`` loads the global truncated to ``r_i`` components, trains,
    and sends its update; the server rebuilds its factors ``(A_i, B_i)`` and stacks them,
    ``A = [A_1; ...; A_n]`` and ``B = [p_1 B_1, ..., p_n B_n]``, so that
    ``B A = sum_i p_i B_i A_i`` with no cross terms. The stack is then re-expressed with
    components sorted by singular value (two thin QRs and a small SVD), so the first
    ``r`` components of the next global are its best rank-``r`` approximation, which is
    what a site of rank ``r`` loads (the redistribution of FlexLoRA, Bai et al., 2024).
    Non-LoRA tensors (the projector) are averaged as in FedAvg.

    Trade-off: aggregation is exact, but the global's rank is ``sum_i r_i`` (capped by
    ``max_rank``), so download bytes grow with the number of sites, and a site whose
    rank is below the global's numerical rank loses the truncated components when it
    loads. It needs each site's factors, so it is *not linear*: it cannot run under
    secure aggregation or central DP on the sum (`HetLoRA` can). FLoRA proper avoids the
    truncation by merging the global product into each site's frozen base weights and
    starting a fresh LoRA every round; that needs the client to keep merged base
    weights across rounds, which fedvlm's per-round client processes do not.

    Every site must scale its LoRA product by the same constant (``lora_alpha``
    proportional to its rank).

    Parameters
    ----------
    max_rank : int or None (default: None)
        Largest rank of the global adapter; None keeps ``sum_i r_i`` (exact). A run sets
        it from ``flora-max-rank``, which defaults to the run's ``lora-rank``
        (`strategies.settings`): the coordinator evaluates and saves the global with a
        model of that rank, so the stacked product is kept as its best rank-``lora-rank``
        approximation (exact whenever the sites' ranks add up to at most ``lora-rank``),
        and every download keeps the same size.
    max_update_norm, clip_update_norm : float or None
        See `AdapterStrategy`.
    **fedavg_kwargs
        Sampling settings passed to Flower's `FedAvg`.
    """

    accepts_site_ranks = True

    linear_in_updates = False

    def __init__(self, *, max_rank: int | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.max_rank = max_rank

    def update_spec(self) -> dict[str, TensorSpec]:
        """LoRA factors may come at any rank up to the global's."""
        return variable_rank_spec(self._require_global())

    def next_global(
        self, server_round: int, accepted: Sequence[AcceptedUpdate]
    ) -> dict[str, np.ndarray]:
        """Stack the rebuilt factors per LoRA pair; average the other tensors."""
        current = self._require_global()
        weights = [a.num_examples for a in accepted]
        plain = [name for name in current if factor_of(name) is None]
        mean_plain = weighted_mean([{n: a.update[n] for n in plain} for a in accepted], weights)
        new_global = {name: current[name] + mean_plain[name] for name in plain}
        for name_a, name_b in lora_pairs(current):
            factors = []
            for a in accepted:
                rank = a.update[name_a].shape[0]
                start = truncate_to_rank({name_a: current[name_a], name_b: current[name_b]}, rank)
                factors.append((start[name_a] + a.update[name_a], start[name_b] + a.update[name_b]))
            stacked_a, stacked_b = stack_factors(factors, weights)
            rank = stacked_a.shape[0] if self.max_rank is None else self.max_rank
            new_global[name_a], new_global[name_b] = refactor_by_importance(
                stacked_a, stacked_b, rank
            )
        return new_global
