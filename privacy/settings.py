"""Differential-privacy settings, parsed and validated once from Flower's run config.

Privacy is fail-closed: every setting that would weaken the guarantee without the user
noticing (no budget, a non-positive ε, a δ that allows a whole record to leak, noise without
a clipping bound) is a `ConfigError` naming the key, raised before anything trains. Checks that
need numbers only known later (a site's example count, the number of sites) are done by
`check_delta` where those numbers are known, still before any release.

Key semantics (0.0 means "not set": Flower's TOML config has no null):

- ``dp-target-epsilon`` / ``dp-client-target-epsilon`` is the run's budget and is required.
- ``dp-noise-multiplier`` / ``dp-client-noise-multiplier``: 0.0 calibrates the noise once so that
  the planned rounds spend exactly the budget; a positive value is used as given, and training
  stops (a site refuses, or the coordinator ends the run) when the next round would pass the
  budget.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fedvlm.errors import ConfigError
from fedvlm.settings_registry import Setting, setting
from fedvlm.site_metrics import PERSONALISE_STEPS, EvalSettings

Mode = Literal["none", "sample", "client"]
MODES = ("none", "sample", "client")
ACCOUNTANTS = ("prv", "rdp")


def _non_negative(value: float) -> bool:
    return value >= 0


def _positive(value: float) -> bool:
    return value > 0


def _open_unit(value: float) -> bool:
    return 0 < value < 1


DP_MODE = setting(
    "dp-mode",
    str,
    "none",
    'Differential privacy: "none", "sample" (DP-SGD per example at each site) or "client" '
    "(clipped site updates, Gaussian noise on the sum).",
    check=MODES.__contains__,
    expect=" | ".join(MODES),
)
DP_ACCOUNTANT = setting(
    "dp-accountant",
    str,
    "prv",
    "Privacy accountant (Opacus): PRV or RDP.",
    check=ACCOUNTANTS.__contains__,
    expect=" | ".join(ACCOUNTANTS),
)


@dataclass(frozen=True)
class _LevelKeys:
    """The four keys of one DP level (sample or client)."""

    epsilon: Setting[float]
    delta: Setting[float]
    noise: Setting[float]
    clip: Setting[float]


def _level_keys(prefix: str, unit: str, clip_key: str, clip_doc: str) -> _LevelKeys:
    return _LevelKeys(
        epsilon=setting(
            f"{prefix}target-epsilon",
            float,
            0.0,
            f"The run's ε budget per {unit}; the run stops before it is exceeded.",
        ),
        delta=setting(
            f"{prefix}delta",
            float,
            1e-5,
            f"δ of the {unit}-level guarantee (below 1/n).",
            check=_open_unit,
            expect="in (0, 1)",
        ),
        noise=setting(
            f"{prefix}noise-multiplier",
            float,
            0.0,
            f"Noise multiplier of the {unit}-level mechanism; 0: calibrated to the budget.",
            check=_non_negative,
            expect=">= 0 (0 = calibrate)",
        ),
        clip=setting(clip_key, float, 1.0, clip_doc),
    )


SAMPLE_KEYS = _level_keys(
    "dp-", "example", "dp-max-grad-norm", "Per-example gradient clipping bound (DP-SGD)."
)
CLIENT_KEYS = _level_keys(
    "dp-client-", "site", "dp-client-clip", "Bound on the norm of each site's update."
)


@dataclass(frozen=True)
class SampleLevelSettings:
    """DP-SGD at each site: per-example clipping to ``max_grad_norm`` and Gaussian noise.

    Attributes
    ----------
    target_epsilon : float
        The whole run's ε budget per site.
    delta : float
        δ of the guarantee; each site requires δ < 1/n.
    noise_multiplier : float or None
        Fixed z, or None to calibrate it from the budget and the planned steps.
    max_grad_norm : float
        Per-example clipping bound C.
    accountant : str
        "prv" or "rdp".
    """

    target_epsilon: float
    delta: float
    noise_multiplier: float | None
    max_grad_norm: float
    accountant: str


@dataclass(frozen=True)
class ClientLevelSettings:
    """DP on whole sites: clip each update to ``clip``, noise z*clip on the sum of updates."""

    target_epsilon: float
    delta: float
    noise_multiplier: float | None
    clip: float
    accountant: str


@dataclass(frozen=True)
class PrivacySettings:
    """Which DP protects the run, with its validated parameters (None when not used)."""

    mode: Mode = "none"
    sample: SampleLevelSettings | None = None
    client: ClientLevelSettings | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "PrivacySettings":
        """Parse the ``dp-*`` keys; raise ConfigError naming the key at fault.

        Keys of the mode not chosen are still type-checked, so a typo cannot hide.
        """
        mode = DP_MODE.read(config)
        accountant = DP_ACCOUNTANT.read(config)
        sample = _level(config, accountant, SAMPLE_KEYS, required=mode == "sample")
        client = _level(config, accountant, CLIENT_KEYS, required=mode == "client")
        if mode == "sample":
            _refuse_personalisation(config)
            return cls(mode, sample=SampleLevelSettings(*sample))
        if mode == "client":
            return cls(mode, client=ClientLevelSettings(*client))
        return cls()


def _refuse_personalisation(config: Mapping[str, Any]) -> None:
    """Refuse personalised evaluation under sample-level DP.

    It trains ``eval-personalise-steps`` plain (non-DP) steps on the training split and
    releases the tuned accuracy and loss: a release about the training examples that no
    DP-SGD account covers.
    """
    if EvalSettings.from_config(config).personalise_steps > 0:
        raise ConfigError(
            PERSONALISE_STEPS.key,
            "personalised evaluation trains without DP on the training split and releases its "
            "accuracy; set eval-personalise-steps = 0 with dp-mode = sample",
        )


def _level(
    config: Mapping[str, Any], accountant: str, keys: _LevelKeys, *, required: bool
) -> tuple[float, float, float | None, float, str]:
    """Read one level's (ε budget, δ, z or None, clip, accountant); enforce it if ``required``."""
    epsilon = keys.epsilon.read(config)
    delta = keys.delta.read(config)
    noise = keys.noise.read(config)
    clip = keys.clip.read(config)
    if required:
        if not epsilon > 0:
            raise ConfigError(
                keys.epsilon.key,
                f"is {epsilon!r}: differential privacy needs a positive ε budget for the run",
            )
        if not clip > 0:
            raise ConfigError(
                keys.clip.key,
                f"is {clip!r}: noise without a positive clipping bound protects nothing",
            )
    return epsilon, delta, (noise or None), clip, accountant


def check_delta(key: str, delta: float, population: int, unit: str) -> None:
    """Refuse δ ≥ 1/n: such a δ lets the mechanism publish one whole record outright.

    Parameters
    ----------
    key : str
        The δ key ("dp-delta" or "dp-client-delta").
    delta : float
        The configured δ.
    population : int
        n: the site's training examples (sample level) or the number of sites (client level).
    unit : str
        What n counts, for the message.

    Raises
    ------
    ConfigError
        Naming ``key``, when ``delta >= 1 / population``.
    """
    if population < 1 or delta >= 1.0 / population:
        raise ConfigError(
            key,
            f"is {delta:g} but there are {population} {unit}: δ must be below 1/{population}"
            f" = {1.0 / max(population, 1):.3g}",
        )
