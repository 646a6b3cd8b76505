"""Unbiased stochastic quantisation of clipped, weighted updates into the masking modulus.

A coordinate x in [-clip, clip] becomes an integer q in [0, levels - 1] with E[q] exactly
(x + clip) / step, and is multiplied by the client's integer weight w; w itself rides as one
extra coordinate. The sums S = sum(w q) and W = sum(w) give sum(w x) = S * step - clip * W
without bias, and SecAggConfig has already checked that S can never reach the modulus.
"""

from __future__ import annotations

import numpy as np

from . import crypto
from .config import SecAggConfig
from .errors import MalformedPayloadError


def quantize(update: np.ndarray, weight: int, config: SecAggConfig) -> np.ndarray:
    """Return ``[w * q_1, ..., w * q_d, w]`` in ``config.dtype``.

    Parameters
    ----------
    update : np.ndarray
        Flat float update; coordinates beyond ``[-clip, clip]`` are clipped.
    weight : int
        Integer weight (example count) in ``[0, config.max_weight]``.
    config : SecAggConfig
        Clip range, levels and container type.
    """
    if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
        raise MalformedPayloadError(f"weight must be an integer example count, got {weight!r}")
    if not 0 <= weight <= config.max_weight:
        raise MalformedPayloadError(
            f"weight {weight} is outside [0, {config.max_weight}] (secagg-max-weight): it would "
            "overflow the modulus; raise secagg-max-weight or cap the example count"
        )
    x = np.asarray(update, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise MalformedPayloadError("the update holds NaN or infinite values")
    z = (np.clip(x, -config.clip, config.clip) + config.clip) / config.step
    floor = np.floor(z)
    coins = crypto.uniform01(crypto.random_seed(), x.size)
    q = np.minimum(floor + (coins < z - floor), config.levels - 1).astype(np.uint64)
    out = np.empty(x.size + 1, dtype=config.dtype)
    out[:-1] = q * np.uint64(weight)
    out[-1] = weight
    return out


def dequantize(total: np.ndarray, config: SecAggConfig) -> tuple[np.ndarray, int]:
    """Return ``(sum of w_i * update_i, sum of w_i)`` from the unmasked integer sum."""
    total_weight = int(total[-1])
    weighted = total[:-1].astype(np.float64) * config.step - config.clip * total_weight
    return weighted, total_weight
