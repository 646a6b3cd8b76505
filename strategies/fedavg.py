"""Federated Averaging of adapter updates (McMahan et al., 2017)."""

import numpy as np

from strategies.base import AdapterStrategy


class FedAvg(AdapterStrategy):
    """FedAvg on updates: next global = global + weighted mean of the updates.

    With updates ``u_i = local_i - global`` and weights ``w_i`` (examples trained on),
    ``global + sum_i w_i u_i / sum_i w_i`` equals Flower's weighted average of the
    local adapters, but only the update travels, which is what secure aggregation and
    update clipping need. Linear in the updates.

    Parameters
    ----------
    max_update_norm : float or None (default: None)
        Replies whose update has a larger L2 norm are rejected (None: no bound).
    **fedavg_kwargs
        Sampling settings passed to Flower's `FedAvg`.
    """

    def apply_mean_update(
        self, server_round: int, mean_update: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Add the mean update to the global adapter."""
        current = self._require_global()
        return {name: current[name] + mean_update[name] for name in current}
