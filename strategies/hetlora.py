"""Heterogeneous LoRA ranks by zero-padding (HetLoRA, Cho et al., 2024): linear."""

from collections.abc import Sequence

import numpy as np

from fedvlm.lora_factors import pad_to_shapes
from strategies.base import weighted_mean
from strategies.fedavg import FedAvg
from strategies.validation import AcceptedUpdate, TensorSpec, variable_rank_spec


class HetLoRA(FedAvg):
    """FedAvg where each site trains the first ``r_i`` components of a rank-R adapter.

    The global adapter has the largest rank R. A site of rank ``r_i`` loads its first
    ``r_i`` components (`lora_factors.truncate_to_rank`), trains them, and sends an
    update of rank ``r_i`` (or already zero-padded to R, which secure aggregation
    needs since masks must cover equal shapes); the server pads with zeros and takes
    the weighted mean.

    Trade-off: it stays *linear* (works under secure aggregation and client-level DP)
    and the global keeps fixed shapes, but it is not exact. Averaging padded factors
    averages A and B separately, so the result differs from ``mean_i(B_i A_i)`` by
    cross terms, and components above a site's rank receive a zero update from it, so
    high-rank components learn only from the sites that hold them, at a step diluted by
    the others' weight. Use `FLoRA` stacking when exactness matters more than secure
    aggregation.

    Every site must scale its LoRA product by the same constant (``lora_alpha``
    proportional to its rank), or the same factors mean different weight changes.

    Parameters
    ----------
    max_update_norm, clip_update_norm : float or None
        See `AdapterStrategy`.
    **fedavg_kwargs
        Sampling settings passed to Flower's `FedAvg`.
    """

    accepts_site_ranks = True

    def update_spec(self) -> dict[str, TensorSpec]:
        """LoRA factors may come at any rank up to the global's."""
        return variable_rank_spec(self._require_global())

    def combine_updates(self, accepted: Sequence[AcceptedUpdate]) -> dict[str, np.ndarray]:
        """Zero-pad every update to the global's rank, then take the weighted mean."""
        shapes = {name: tensor.shape for name, tensor in self._require_global().items()}
        padded = [pad_to_shapes(a.update, shapes) for a in accepted]
        return weighted_mean(padded, [a.num_examples for a in accepted])
