"""Validated configuration of one secure-aggregation round.

Every field maps to a run-config key (``secagg-*``) so that a refused setting names the key the
user must change. Defaults are resolved here, once, so the client and the coordinator derive the
same modulus, graph degree and threshold from the same numbers: the degree and threshold come
from the stated threat model (`bounds`), never from a rule of thumb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from fedvlm.errors import ConfigError

from . import bounds

# Run-config key of each field (also the key used when the config travels in a payload).
KEYS = {
    "num_clients": "secagg-num-clients",
    "clip": "secagg-clip",
    "levels": "secagg-levels",
    "max_weight": "secagg-max-weight",
    "degree": "secagg-degree",
    "threshold": "secagg-threshold",
    "corrupt_fraction": "secagg-corrupt-fraction",
    "dropout_fraction": "secagg-dropout-fraction",
    "sigma": "secagg-sigma",
    "eta": "secagg-eta",
    "federation_size": "secagg-federation-size",
}
_FLOATS = ("clip", "corrupt_fraction", "dropout_fraction")
_MAX_BITS = 128  # sigma / eta beyond this would only slow the exact tail sums down

_CONTAINERS = (np.uint8, np.uint16, np.uint32, np.uint64)
_UINT32_SUM = (1 << 32) - 1  # largest sum a uint32 modulus holds without wrapping


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
        Neighbours of each client in the communication graph; 0 derives it (`bounds.derive`:
        the smallest degree whose threshold meets ``sigma`` and ``eta``). Must be even
        (ring-shaped Harary graph) unless it makes the graph complete.
    threshold : int
        Shares needed to rebuild a client's secret; 0 derives it (the smallest threshold that
        meets ``sigma`` for the degree). A coordinator that tells some neighbours a client
        survived and others that it dropped (a split view) collects both kinds of its shares
        with ``2 * threshold - degree`` colluding neighbours; any threshold, derived or set,
        must keep the chance of that many among ``corrupt_fraction`` colluders below 2^-sigma.
    corrupt_fraction : float
        γ: fraction of the sites (rounded up: any γ > 0 means at least one) that may collude
        with the coordinator. 0 states that none does (only sound when every site is trusted
        not to help the coordinator); it is recorded with the round like every other value.
    dropout_fraction : float
        δ: fraction of the sites (rounded down) that may drop out mid-round.
    sigma, eta : int
        Privacy fails with probability at most 2^-sigma, a round fails for dropouts within
        the bound with probability at most 2^-eta (over the draw of the graph).
    federation_size : int
        Sites in the federation when a round samples some of them: ``corrupt_fraction`` of
        them may all be in this round (the coordinator picks the sample). 0: this round's
        size, sound only when every site of the federation is sampled.
    """

    num_clients: int
    clip: float
    levels: int = 0
    max_weight: int = 1
    degree: int = 0
    threshold: int = 0
    corrupt_fraction: float = 0.05
    dropout_fraction: float = 0.1
    sigma: int = 40
    eta: int = 20
    federation_size: int = 0

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
        self._check_threat()
        degree, threshold = self._graph_parameters(n)
        object.__setattr__(self, "degree", degree)
        object.__setattr__(self, "threshold", threshold)
        if self.max_sum_bits > 64:
            raise ConfigError(
                KEYS["levels"],
                f"the sum of {n} clients x weight {self.max_weight} x {self.levels} levels "
                f"needs {self.max_sum_bits} bits and would wrap a 64-bit modulus: lower "
                f"{KEYS['levels']}, {KEYS['max_weight']} or {KEYS['num_clients']}",
            )

    def _check_threat(self) -> None:
        for name in ("corrupt_fraction", "dropout_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value < 1):
                raise ConfigError(KEYS[name], f"must be a fraction in [0, 1), got {value!r}")
        for name in ("sigma", "eta"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= _MAX_BITS:
                raise ConfigError(KEYS[name], f"must be an integer in [1, {_MAX_BITS}] (bits)")
        size = self.federation_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ConfigError(KEYS["federation_size"], f"must be an integer >= 0, got {size!r}")

    def _graph_parameters(self, n: int) -> tuple[int, int]:
        """Return (degree, threshold): derived where 0, and refused where not private enough."""
        threat = self.threat
        derived = bounds.derive(n, threat) if not (self.degree and self.threshold) else None
        if not self.degree and derived is None:
            raise ConfigError(KEYS["corrupt_fraction"], self._infeasible(n))
        degree = self.degree or derived.degree
        if not 1 <= degree <= n - 1:
            raise ConfigError(KEYS["degree"], f"must be in [1, {n - 1}] for {n} clients")
        if degree < n - 1 and degree % 2:
            raise ConfigError(
                KEYS["degree"], f"{degree} is odd: use an even degree or {n - 1} (complete graph)"
            )
        if self.threshold:
            threshold = self.threshold
        elif derived is not None and derived.degree == degree:
            threshold = derived.threshold
        else:
            found = bounds.private_threshold(n, degree, threat)
            if found is None:
                raise ConfigError(
                    KEYS["degree"],
                    f"no threshold keeps degree {degree} private against "
                    f"{threat.corrupt(n)} colluding sites: {self._advice()}",
                )
            threshold = found
        if not degree // 2 < threshold <= degree:
            raise ConfigError(
                KEYS["threshold"],
                f"{threshold} must exceed half the degree ({degree}) and not exceed it, so the "
                "coordinator can never collect both kinds of share of one client",
            )
        result = bounds.evaluate(n, degree, threshold, threat)
        if not result.private:
            least = bounds.private_threshold(n, degree, threat)
            raise ConfigError(
                KEYS["threshold"],
                f"{threshold} with degree {degree} lets a coordinator that splits its view "
                f"open a site's update with {result.colluders_needed} colluding neighbours; "
                f"with {result.corrupt} colluding sites ({KEYS['corrupt_fraction']} = "
                f"{self.corrupt_fraction}) the chance is up to {result.privacy_failure:.3g}, "
                f"above 2^-{self.sigma}: "
                + (f"use a threshold of at least {least}" if least else self._advice()),
            )
        return degree, threshold

    def _infeasible(self, n: int) -> str:
        threat = self.threat
        return (
            f"no graph degree and threshold for {n} sites keep a site's update private "
            f"against up to {threat.corrupt(n)} colluding site(s) (probability 2^-{self.sigma}) "
            f"and survive {threat.dropouts(n)} dropout(s) (2^-{self.eta}): {self._advice()}"
        )

    def _advice(self) -> str:
        return (
            f"add sites, or lower {KEYS['corrupt_fraction']} (0 states that no site colludes "
            f"with the coordinator; it is recorded in the ledger and the model card) or "
            f"{KEYS['dropout_fraction']}"
        )

    @property
    def threat(self) -> bounds.ThreatModel:
        """The threat model the degree and threshold are derived under."""
        return bounds.ThreatModel(
            float(self.corrupt_fraction),
            float(self.dropout_fraction),
            self.sigma,
            self.eta,
            self.federation_size,
        )

    @property
    def guarantees(self) -> bounds.GraphBounds:
        """What this round's degree and threshold guarantee (failure probabilities)."""
        return bounds.evaluate(self.num_clients, self.degree, self.threshold, self.threat)

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
                kwargs[f.name] = float(value) if f.name in _FLOATS else value
        if "num_clients" not in kwargs or "clip" not in kwargs:
            missing = KEYS["num_clients"] if "num_clients" not in kwargs else KEYS["clip"]
            raise ConfigError(missing, "is required for secure aggregation")
        return cls(**kwargs)
