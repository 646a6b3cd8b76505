"""The strategy's parameters from Flower's ``run_config``, parsed once and typed.

The coordinator builds its strategy with `StrategySettings.kwargs_for(name)`, so every
key reaches only the strategies that take it, and a value out of range stops the run at
start-up with the key named. Flower's TOML config has no null: ``0`` / ``0.0`` means
"not set" (the strategy's own default, no bound, the run's rank) where noted.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedvlm.errors import ConfigError
from fedvlm.settings_registry import setting

# Which settings each strategy takes, beyond the sampling and norm settings all take.
_SERVER_OPTIMIZER = ("eta", "beta_1", "beta_2", "tau")
_EXTRA_ARGS: dict[str, tuple[str, ...]] = {
    "fedprox": ("proximal_mu",),
    "fedadam": _SERVER_OPTIMIZER,
    "fedyogi": _SERVER_OPTIMIZER,
    "trimmed-mean": ("beta",),
    "flora": ("max_rank",),
}


def _not_negative(value: float) -> bool:
    return value >= 0


def _unit_interval(value: float) -> bool:
    return 0.0 <= value < 1.0


def _unset_if_zero(value: float) -> float | None:
    return value if value > 0 else None


_GE0 = ">= 0"
PROXIMAL_MU = setting(
    "proximal-mu",
    float,
    0.0,
    "FedProx's proximal term mu (sent to the sites).",
    check=_not_negative,
    expect=_GE0,
)
SERVER_ETA = setting(
    "server-eta",
    float,
    0.0,
    "FedAdam/FedYogi server learning rate; 0: the strategy's default.",
    check=_not_negative,
    expect=_GE0,
)
SERVER_BETA_1 = setting(
    "server-beta-1",
    float,
    0.9,
    "Server optimiser's first-moment decay.",
    check=_unit_interval,
    expect="in [0, 1)",
)
SERVER_BETA_2 = setting(
    "server-beta-2",
    float,
    0.99,
    "Server optimiser's second-moment decay.",
    check=_unit_interval,
    expect="in [0, 1)",
)
SERVER_TAU = setting(
    "server-tau",
    float,
    0.001,
    "Server optimiser's adaptivity floor.",
    check=_not_negative,
    expect=_GE0,
)
TRIM_BETA = setting(
    "trim-beta",
    float,
    0.2,
    "Trimmed mean: fraction cut from each tail.",
    check=lambda v: 0 <= v < 0.5,
    expect="in [0, 0.5)",
)
MAX_UPDATE_NORM = setting(
    "max-update-norm",
    float,
    0.0,
    "Replies with a larger update norm are rejected; 0: no bound.",
    check=_not_negative,
    expect=_GE0,
)
CLIP_UPDATE_NORM = setting(
    "clip-update-norm",
    float,
    0.0,
    "Updates with a larger norm are scaled down to it; 0: none.",
    check=_not_negative,
    expect=_GE0,
)
FLORA_MAX_RANK = setting(
    "flora-max-rank",
    int,
    0,
    "FLoRA's cap on the stacked global rank; 0: the run's lora-rank.",
    check=_not_negative,
    expect=_GE0,
)


@dataclass(frozen=True)
class StrategySettings:
    """Strategy parameters of a run (Flower's ``run_config``).

    Attributes
    ----------
    proximal_mu : float
        FedProx's ``mu`` (``proximal-mu``), sent to the clients.
    eta : float or None
        FedAdam/FedYogi server learning rate (``server-eta``); None: the strategy's default.
    beta_1, beta_2 : float
        Server-optimizer moment decays (``server-beta-1``, ``server-beta-2``).
    tau : float
        Server-optimizer adaptivity floor (``server-tau``).
    beta : float
        Trimmed mean: fraction cut from each tail (``trim-beta``).
    max_update_norm : float or None
        Replies with a larger update norm are rejected (``max-update-norm``).
    clip_update_norm : float or None
        Updates with a larger norm are scaled down to it (``clip-update-norm``).
    max_rank : int or None
        FLoRA's cap on the global rank (``flora-max-rank``); None: the run's ``lora-rank``.
    """

    proximal_mu: float = PROXIMAL_MU.default
    eta: float | None = None
    beta_1: float = SERVER_BETA_1.default
    beta_2: float = SERVER_BETA_2.default
    tau: float = SERVER_TAU.default
    beta: float = TRIM_BETA.default
    max_update_norm: float | None = None
    clip_update_norm: float | None = None
    max_rank: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "StrategySettings":
        """Parse the strategy keys of a run config; raises ConfigError naming the key."""
        return cls(
            proximal_mu=PROXIMAL_MU.read(config),
            eta=_unset_if_zero(SERVER_ETA.read(config)),
            beta_1=SERVER_BETA_1.read(config),
            beta_2=SERVER_BETA_2.read(config),
            tau=SERVER_TAU.read(config),
            beta=TRIM_BETA.read(config),
            max_update_norm=_unset_if_zero(MAX_UPDATE_NORM.read(config)),
            clip_update_norm=_unset_if_zero(CLIP_UPDATE_NORM.read(config)),
            max_rank=FLORA_MAX_RANK.read(config) or None,
        )

    def kwargs_for(self, name: str, *, global_rank: int) -> dict[str, object]:
        """Constructor arguments of strategy ``name`` (unknown names: the common ones).

        Unset values are left out, so the strategy's own default applies, except FLoRA's
        rank cap, which defaults to ``global_rank`` (the run's ``lora-rank``): the
        coordinator evaluates and saves the global adapter with a model of that rank, so
        the stacked global is re-factored to its best rank-``global_rank`` approximation.

        Raises
        ------
        ConfigError
            Naming ``flora-max-rank``, if it exceeds ``global_rank``.
        """
        if self.max_rank is not None and self.max_rank > global_rank:
            raise ConfigError(
                "flora-max-rank",
                f"{self.max_rank} exceeds lora-rank = {global_rank}: the coordinator's model "
                "(held-out evaluation, saved adapter) has the run's rank; raise lora-rank instead",
            )
        kwargs: dict[str, object] = {
            "max_update_norm": self.max_update_norm,
            "clip_update_norm": self.clip_update_norm,
        }
        for field in _EXTRA_ARGS.get(name.strip().lower(), ()):
            value = getattr(self, field)
            if value is not None:
                kwargs[field] = value
        if name.strip().lower() == "flora":
            kwargs["max_rank"] = self.max_rank or global_rank
        return kwargs
