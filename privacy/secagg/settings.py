"""What both ends of a federation agree on before a secure round: settings and update layout.

The coordinator and every site parse the same ``secagg-*`` run-config keys with the same
defaults (``SecureAggregationSettings``), so a site can recompute the round's parameters on
its own and refuse a coordinator that sends weaker ones. ``flatten_update`` and
``unflatten_sum`` fix how an adapter (name -> tensor) becomes the one flat vector the protocol
masks, and back: sorted names, so the order never depends on how a transport kept them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedvlm.errors import ConfigError
from fedvlm.settings_registry import Scope, setting

from . import bounds
from .config import KEYS, SecAggConfig
from .errors import CoordinatorMisbehaviourError, MalformedPayloadError

log = logging.getLogger(__name__)


def _finite_positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


def _auto_or_count(v: int) -> bool:
    return v >= 0


def _fraction(v: float) -> bool:
    return 0 <= v < 1


def _bits(v: int) -> bool:
    return 1 <= v <= 128


_AUTO = ">= 0 (0 = auto)"
ENABLED = setting(
    "secure-aggregation",
    bool,
    False,
    "Aggregate train replies with SecAgg+: the coordinator learns only the sum.",
)
CLIP = setting(
    KEYS["clip"],
    float,
    10.0,
    "L2 norm each update is clipped to before masking.",
    check=_finite_positive,
    expect="a finite number > 0",
)
MAX_WEIGHT = setting(
    KEYS["max_weight"],
    int,
    1000,
    "A site's weight is its example count capped at this.",
    check=lambda v: v >= 1,
    expect=">= 1",
)
LEVELS = setting(
    KEYS["levels"],
    int,
    0,
    "Quantisation levels; 0: the most whose sum still fits 32 bits.",
    check=_auto_or_count,
    expect=_AUTO,
)
DEGREE = setting(
    KEYS["degree"],
    int,
    0,
    "Neighbours per site; 0: derived from the threat model.",
    check=_auto_or_count,
    expect=_AUTO,
)
THRESHOLD = setting(
    KEYS["threshold"],
    int,
    0,
    "Shares that rebuild a secret; 0: derived from the threat model.",
    check=_auto_or_count,
    expect=_AUTO,
)
_FLOOR = (
    " A deployed site holds the coordinator to its own node-config value, else to the default"
    " (the run config comes from the coordinator)."
)
CORRUPT_FRACTION = setting(
    KEYS["corrupt_fraction"],
    float,
    0.05,
    "γ: share of sites that may collude with the coordinator (at least one when > 0)." + _FLOOR,
    scope=Scope.BOTH,
    check=_fraction,
    expect="in [0, 1)",
)
FEDERATION_SIZE = setting(
    KEYS["federation_size"],
    int,
    0,
    "Sites in the federation, when a round samples some of them: γ of them may all be in one "
    "round. 0: the round's own size." + _FLOOR,
    scope=Scope.BOTH,
    check=lambda v: v >= 0,
    expect=">= 0",
)
DROPOUT_FRACTION = setting(
    KEYS["dropout_fraction"],
    float,
    0.1,
    "δ: share of sites that may drop out mid-round (or that the coordinator may drop)." + _FLOOR,
    scope=Scope.BOTH,
    check=_fraction,
    expect="in [0, 1)",
)
MAX_ABORTS = setting(
    "secagg-max-aborts",
    int,
    3,
    "A site refuses secure aggregation after this many rounds in a row aborted after it "
    "revealed its graph seed: bounds how often a coordinator can re-draw the graph by "
    "aborting. A site's node config overrides the run's.",
    scope=Scope.BOTH,
    check=lambda v: v >= 1,
    expect=">= 1",
)
SIGMA = setting(
    KEYS["sigma"],
    int,
    40,
    "Privacy fails with probability at most 2^-sigma." + _FLOOR,
    scope=Scope.BOTH,
    check=_bits,
    expect="an integer in [1, 128]",
)
ETA = setting(
    KEYS["eta"],
    int,
    20,
    "Correctness fails with probability at most 2^-eta.",
    check=_bits,
    expect="an integer in [1, 128]",
)


@dataclass(frozen=True)
class SecureAggregationSettings:
    """The ``secure-aggregation`` and ``secagg-*`` run-config keys, parsed and checked once.

    Attributes
    ----------
    enabled : bool
        ``secure-aggregation``: aggregate train replies with SecAgg+.
    clip : float
        ``secagg-clip``: L2 norm every update is clipped to before masking. An L2 bound
        bounds every coordinate, so it is also the quantisation range ``[-clip, clip]``.
        The default sits above the embedded model's usual update (16 Adam steps at lr 3e-3:
        norm ~5.4); a larger clip only coarsens the quantisation step ``2 clip / levels``.
    max_weight : int
        ``secagg-max-weight``: a site's weight is its example count capped at this; 1 gives
        equal weights.
    levels, degree, threshold : int
        ``secagg-levels`` / ``-degree`` / ``-threshold``; 0 lets `SecAggConfig` pick them
        from the number of sites in the round (degree and threshold from the threat model).
    corrupt_fraction, dropout_fraction : float
        ``secagg-corrupt-fraction`` (γ) / ``secagg-dropout-fraction`` (δ): the sites that may
        collude with the coordinator / drop out mid-round. γ = 0.05 counts at least one
        colluding site in any federation, so a coordinator with one helper is covered.
    sigma, eta : int
        ``secagg-sigma`` / ``secagg-eta``: privacy and correctness fail with probability at
        most 2^-sigma and 2^-eta (40 and 20, the values of Bell et al. 2020).
    """

    enabled: bool = ENABLED.default
    clip: float = CLIP.default
    max_weight: int = MAX_WEIGHT.default
    levels: int = LEVELS.default
    degree: int = DEGREE.default
    threshold: int = THRESHOLD.default
    corrupt_fraction: float = CORRUPT_FRACTION.default
    dropout_fraction: float = DROPOUT_FRACTION.default
    sigma: int = SIGMA.default
    eta: int = ETA.default
    federation_size: int = FEDERATION_SIZE.default

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SecureAggregationSettings:
        """Parse a Flower ``run_config``; raises ConfigError naming the key at fault."""
        settings = cls(
            enabled=ENABLED.read(config),
            clip=CLIP.read(config),
            max_weight=MAX_WEIGHT.read(config),
            levels=LEVELS.read(config),
            degree=DEGREE.read(config),
            threshold=THRESHOLD.read(config),
            corrupt_fraction=CORRUPT_FRACTION.read(config),
            dropout_fraction=DROPOUT_FRACTION.read(config),
            sigma=SIGMA.read(config),
            eta=ETA.read(config),
            federation_size=FEDERATION_SIZE.read(config),
        )
        if settings.levels == 1:
            raise ConfigError(KEYS["levels"], "must be 0 (auto) or at least 2")
        return settings

    def round_config(self, num_clients: int, *, uniform_weights: bool = False) -> SecAggConfig:
        """Return the protocol parameters of a round over ``num_clients`` sites.

        Parameters
        ----------
        num_clients : int
            Sites sampled for the round (sizes the modulus and the automatic graph).
        uniform_weights : bool
            Every site weighs 1 (client-level DP): the weight bound becomes 1, which leaves
            the finest quantisation step.

        Raises
        ------
        ConfigError
            Naming the ``secagg-*`` key that cannot work for this many sites.
        """
        return SecAggConfig(
            num_clients=num_clients,
            clip=self.clip,
            levels=self.levels,
            max_weight=1 if uniform_weights else self.max_weight,
            degree=self.degree,
            threshold=self.threshold,
            corrupt_fraction=self.corrupt_fraction,
            dropout_fraction=self.dropout_fraction,
            sigma=self.sigma,
            eta=self.eta,
            federation_size=self.federation_size,
        )

    def dropout_warning(self, num_clients: int, *, limit: int = 1000) -> str | None:
        """A start-up warning when a round of ``num_clients`` survives no dropout, else None.

        With 3 sites the defaults give degree 2 and threshold 2: one site lost (at any stage:
        a sampled site that never answers setup is a missing vertex) leaves its neighbours'
        secrets one share short and the round fails. The
        warning names the smallest federation (at these settings) that survives one.
        """
        config = self.round_config(num_clients)
        if config.dropouts_survived >= 1:
            return None
        enough = next(
            (n for n in range(num_clients + 1, limit) if self._survives_one(n)),
            None,
        )
        advice = f"from {enough} sites on, one dropout is survived" if enough else ""
        return (
            f"secure aggregation over {num_clients} sites survives no dropout after key "
            f"sharing (degree {config.degree}, threshold {config.threshold}: every site needs "
            f"{config.threshold} of its {config.degree} neighbours); a site lost mid-round "
            f"fails the round. {advice}".rstrip()
        )

    def _survives_one(self, num_clients: int) -> bool:
        try:
            return self.round_config(num_clients).dropouts_survived >= 1
        except ConfigError:  # explicit secagg-degree/threshold that do not fit n
            return False

    def weight(self, num_examples: int, *, uniform_weights: bool = False) -> int:
        """Return the integer weight a site with ``num_examples`` carries in the sum."""
        return 1 if uniform_weights else max(0, min(int(num_examples), self.max_weight))


def check_offered(
    offered: SecAggConfig, settings: SecureAggregationSettings, *, uniform_weights: bool
) -> None:
    """Refuse a round whose parameters differ from what this site's own settings give.

    A coordinator could otherwise lower the threshold or the degree (fewer shares reveal a
    site's masks) or the clip (a silently distorted update) without any site noticing.

    Raises
    ------
    CoordinatorMisbehaviourError
        Naming each ``secagg-*`` key whose offered value differs from the expected one.
    """
    if not settings.enabled:
        raise CoordinatorMisbehaviourError(
            f"the coordinator asks for secure aggregation but this run has {ENABLED.key} = false"
        )
    expected = settings.round_config(offered.num_clients, uniform_weights=uniform_weights)
    got, want = offered.to_dict(), expected.to_dict()
    differing = [f"{k} = {got[k]!r} (expected {want[k]!r})" for k in want if got[k] != want[k]]
    if differing:
        raise CoordinatorMisbehaviourError(
            "the coordinator's secure-aggregation settings differ from this site's run "
            f"config: {', '.join(differing)}"
        )


@dataclass(frozen=True)
class SiteFloor:
    """The threat model a site holds every round to, whatever the coordinator states.

    In a deployment the run config is the coordinator's (``flwr run`` sends it), so a
    coordinator could state that no site colludes (γ = 0) and get the smallest degree and
    threshold, which its colluders then open; or that no site drops out (δ = 0: k = 6 at 100
    sites), when it can drop any site it likes and a ring that sparse then falls apart into
    partial sums. A site's floor comes from its own node config, else from the defaults; a
    simulated site, whose run config is its own operator's, takes the run config's values.
    """

    corrupt_fraction: float
    sigma: int
    federation_size: int
    dropout_fraction: float = DROPOUT_FRACTION.default

    @classmethod
    def of_site(
        cls, run_config: Mapping[str, Any], node_config: Mapping[str, Any], *, deployed: bool
    ) -> SiteFloor:
        """Read the floor: node config first, then the defaults (deployed) or the run config."""
        fallback = {} if deployed else run_config
        values = {**fallback, **node_config}
        return cls(
            CORRUPT_FRACTION.read(values),
            SIGMA.read(values),
            FEDERATION_SIZE.read(values),
            DROPOUT_FRACTION.read(values),
        )

    def check(self, offered: SecAggConfig) -> None:
        """Refuse offered round parameters that are not private under this floor.

        The offered degree and threshold must keep a split view beyond the colluders this
        site assumes (γ of the federation), and the graph connected after the dropouts it
        assumes (δ, or the offered δ when larger), with probability 2^-σ, whatever the
        coordinator states; stronger ones pass.

        Raises
        ------
        CoordinatorMisbehaviourError
            Naming the floor's keys and the failure probability of the offered parameters.
        """
        threat = bounds.ThreatModel(
            self.corrupt_fraction,
            max(self.dropout_fraction, offered.dropout_fraction),
            self.sigma,
            offered.eta,
            self.federation_size,
        )
        n = offered.num_clients
        held = bounds.evaluate(n, offered.degree, offered.threshold, threat)
        if not held.private:
            raise CoordinatorMisbehaviourError(
                f"the offered degree {offered.degree} and threshold {offered.threshold} for "
                f"{n} sites are not private under this site's floor ({KEYS['corrupt_fraction']}"
                f" = {self.corrupt_fraction}, {KEYS['dropout_fraction']} = "
                f"{self.dropout_fraction}, {KEYS['sigma']} = {self.sigma}, "
                f"{KEYS['federation_size']} = {self.federation_size}: {held.corrupt} colluding "
                f"sites and {held.dropouts} dropouts open one or a partial sum with probability "
                f"up to {held.privacy_failure:.3g}); the "
                "coordinator states a weaker threat model than this site accepts"
            )


def flatten_update(update: Mapping[str, Any], clip: float) -> np.ndarray:
    """Return the update as one float64 vector (sorted names), scaled to L2 norm <= ``clip``.

    Parameters
    ----------
    update : mapping of name -> tensor
        Adapter update (torch tensors or numpy arrays).
    clip : float
        ``secagg-clip``: an update with a larger L2 norm is scaled down to it (direction
        kept), so no coordinate can leave ``[-clip, clip]`` and quantisation never clips.
    """
    flat = np.concatenate(
        [np.asarray(update[name], dtype=np.float64).ravel() for name in sorted(update)]
    )
    norm = float(np.linalg.norm(flat))
    if norm > clip:
        log.info("update norm %.4g scaled down to %s = %.4g", norm, KEYS["clip"], clip)
        flat *= clip / norm
    return flat


def unflatten_sum(flat: np.ndarray, like: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Split a flat (summed) vector back into float32 tensors shaped like ``like``.

    Raises
    ------
    MalformedPayloadError
        If the vector's length does not match the layout.
    """
    sizes = {name: math.prod(like[name]) for name in sorted(like)}
    if flat.size != sum(sizes.values()):
        raise MalformedPayloadError(
            f"the unmasked sum has {flat.size} values but the adapter has {sum(sizes.values())}"
        )
    out, offset = {}, 0
    for name, size in sizes.items():
        out[name] = flat[offset : offset + size].reshape(like[name]).astype(np.float32)
        offset += size
    return out
