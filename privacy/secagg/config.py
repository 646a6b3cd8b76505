"""Validated configuration of one secure-aggregation round.

Every field maps to a run-config key (``secagg-*``) so that a refused setting names the key the
user must change. Defaults are resolved here, once, so the client and the coordinator derive the
same modulus, graph degree and threshold from the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from fedvlm.errors import ConfigError

# Run-config key of each field (also the key used when the config travels in a payload).
KEYS = {
    "num_clients": "secagg-num-clients",
    "clip": "secagg-clip",
    "levels": "secagg-levels",
    "max_weight": "secagg-max-weight",
    "degree": "secagg-degree",
    "threshold": "secagg-threshold",
}

_CONTAINERS = (np.uint8, np.uint16, np.uint32, np.uint64)
_UINT32_SUM = (1 << 32) - 1  # largest sum a uint32 modulus holds without wrapping


def default_degree(num_clients: int) -> int:
    """Return the default graph degree: about 4·log2(n), even, capped at a complete graph.

    Bell et al. (2020) show that a random graph of degree O(log n) keeps the sum private and
    recoverable with high probability; the factor 4 leaves room for ~15 % dropouts at n = 100.
    """
    if num_clients <= 2:
        return max(num_clients - 1, 0)
    return min(num_clients - 1, 2 * math.ceil(2 * math.log2(num_clients)))


@dataclass(frozen=True)
class SecAggConfig:
    """Parameters of a round of SecAgg+.

    Parameters
    ----------
    num_clients : int
        Most clients that take part in the round (sizes the modulus, so the sum cannot wrap).
    clip : float
        Each coordinate of an update is clipped to ``[-clip, clip]`` before quantisation.
    levels : int
        Quantisation levels over ``[-clip, clip]``; the step is ``2 * clip / (levels - 1)``.
        0 picks the most levels whose largest sum still fits 32 bits, so uploads stay uint32
        (the size of an fp32 update) at the finest step they can afford.
    max_weight : int
        Largest integer weight (example count) a client may carry; 1 means equal weights.
    degree : int
        Neighbours of each client in the communication graph; 0 picks ``default_degree``.
        Must be even (ring-shaped Harary graph) unless it makes the graph complete.
    threshold : int
        Shares needed to rebuild a client's secret; 0 picks ``degree // 2 + 1``. It must exceed
        half the degree: each honest neighbour reveals only one kind of share per peer, so a
        majority threshold keeps the coordinator from ever holding both kinds.
    """

    num_clients: int
    clip: float
    levels: int = 0
    max_weight: int = 1
    degree: int = 0
    threshold: int = 0

    def __post_init__(self) -> None:
        n = self.num_clients
        if not isinstance(n, int) or n < 2:
            raise ConfigError(KEYS["num_clients"], f"need at least 2 clients, got {n!r}")
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(KEYS["clip"], f"must be a positive finite number, got {self.clip!r}")
        if not isinstance(self.max_weight, int) or self.max_weight < 1:
            raise ConfigError(
                KEYS["max_weight"], f"must be an integer >= 1, got {self.max_weight!r}"
            )
        if self.levels == 0:
            object.__setattr__(self, "levels", _UINT32_SUM // (n * self.max_weight) + 1)
        if not isinstance(self.levels, int) or self.levels < 2:
            raise ConfigError(KEYS["levels"], f"must be an integer >= 2, got {self.levels!r}")
        degree = self.degree or default_degree(n)
        if not 1 <= degree <= n - 1:
            raise ConfigError(KEYS["degree"], f"must be in [1, {n - 1}] for {n} clients")
        if degree < n - 1 and degree % 2:
            raise ConfigError(
                KEYS["degree"], f"{degree} is odd: use an even degree or {n - 1} (complete graph)"
            )
        threshold = self.threshold or degree // 2 + 1
        if not degree // 2 < threshold <= degree:
            raise ConfigError(
                KEYS["threshold"],
                f"{threshold} must exceed half the degree ({degree}) and not exceed it, so the "
                "coordinator can never collect both kinds of share of one client",
            )
        object.__setattr__(self, "degree", degree)
        object.__setattr__(self, "threshold", threshold)
        if self.max_sum_bits > 64:
            raise ConfigError(
                KEYS["levels"],
                f"the sum of {n} clients x weight {self.max_weight} x {self.levels} levels "
                f"needs {self.max_sum_bits} bits and would wrap a 64-bit modulus: lower "
                f"{KEYS['levels']}, {KEYS['max_weight']} or {KEYS['num_clients']}",
            )

    @property
    def max_sum_bits(self) -> int:
        """Return the bits needed by the largest possible sum of quantised, weighted updates."""
        return (self.num_clients * self.max_weight * (self.levels - 1)).bit_length()

    @property
    def dtype(self) -> np.dtype:
        """Return the smallest unsigned type whose modulus holds the largest sum (no wrap)."""
        for container in _CONTAINERS:
            if np.iinfo(container).bits >= self.max_sum_bits:
                return np.dtype(container)
        raise AssertionError("unreachable: __post_init__ refuses sums above 64 bits")

    @property
    def dropouts_survived(self) -> int:
        """Neighbours a client may lose after key sharing while its secrets stay rebuildable.

        Unmasking needs ``threshold`` shares of each client's secrets, held by its ``degree``
        neighbours: ``degree - threshold`` of them may drop out.
        """
        return self.degree - self.threshold

    @property
    def step(self) -> float:
        """Return the width of one quantisation level."""
        return 2.0 * self.clip / (self.levels - 1)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as run-config keys and scalars (fits a Flower ConfigRecord)."""
        return {KEYS[f.name]: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], **overrides: Any) -> SecAggConfig:
        """Build a config from run-config keys; missing optional keys take their defaults.

        Parameters
        ----------
        values : dict
            Mapping holding ``secagg-*`` keys (a Flower ``run_config`` or a payload).
        **overrides
            Field values that win over ``values`` (e.g. ``num_clients`` of this round).
        """
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in overrides:
                kwargs[f.name] = overrides[f.name]
            elif KEYS[f.name] in values:
                value = values[KEYS[f.name]]
                kwargs[f.name] = float(value) if f.name == "clip" else value
        if "num_clients" not in kwargs or "clip" not in kwargs:
            missing = KEYS["num_clients"] if "num_clients" not in kwargs else KEYS["clip"]
            raise ConfigError(missing, "is required for secure aggregation")
        return cls(**kwargs)
