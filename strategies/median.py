"""Coordinate-wise median of updates (Yin et al., ICML 2018)."""

from collections.abc import Sequence

import numpy as np

from strategies.fedavg import FedAvg
from strategies.validation import AcceptedUpdate


class Median(FedAvg):
    """FedAvg whose combined update is the coordinate-wise median (as Flower's FedMedian).

    For runs without secure aggregation: the median ignores any minority of arbitrary
    updates per coordinate, at the price of a noisier estimate than the mean when all
    sites are honest. Unweighted, and it needs individual updates: not linear.

    Parameters
    ----------
    max_update_norm, clip_update_norm : float or None
        See `AdapterStrategy`.
    **fedavg_kwargs
        Sampling settings passed to Flower's `FedAvg`.
    """

    linear_in_updates = False

    def combine_updates(self, accepted: Sequence[AcceptedUpdate]) -> dict[str, np.ndarray]:
        """Coordinate-wise median of the accepted updates."""
        return {
            name: np.median(np.stack([a.update[name] for a in accepted]).astype(np.float64), axis=0)
            for name in accepted[0].update
        }
