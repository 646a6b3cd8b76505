"""Coordinate-wise trimmed mean of updates (Yin et al., ICML 2018), via Flower."""

from collections.abc import Sequence

import numpy as np
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from fedvlm.errors import ConfigError
from strategies.fedavg import FedAvg
from strategies.validation import AcceptedUpdate


class TrimmedMean(FedAvg):
    """FedAvg whose combined update is the coordinate-wise trimmed mean.

    For runs without secure aggregation: per coordinate, the ``beta`` fraction of the
    largest and of the smallest values are dropped and the rest averaged (Flower's
    `trim_mean`), so up to ``beta * n`` arbitrary updates cannot drag a coordinate
    outside the honest range. Unweighted (a site could lie about its example count),
    and it needs individual updates: not linear.

    Parameters
    ----------
    beta : float (default: 0.2)
        Fraction cut from each tail, in ``[0, 0.5)``.
    max_update_norm, clip_update_norm : float or None
        See `AdapterStrategy`.
    **fedavg_kwargs
        Sampling settings passed to Flower's `FedAvg`.
    """

    linear_in_updates = False

    def __init__(self, *, beta: float = 0.2, **kwargs: object) -> None:
        if not 0.0 <= beta < 0.5:
            raise ConfigError("trim-beta", f"must be in [0, 0.5), got {beta}")
        super().__init__(**kwargs)
        self.beta = beta

    def combine_updates(self, accepted: Sequence[AcceptedUpdate]) -> dict[str, np.ndarray]:
        """Coordinate-wise trimmed mean of the accepted updates."""
        return {
            name: trim_mean(
                np.stack([a.update[name] for a in accepted]).astype(np.float64), self.beta
            )
            for name in accepted[0].update
        }
