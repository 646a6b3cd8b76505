"""Aggregation strategies for federated LoRA fine-tuning (pure math on adapter updates).

Every strategy is a Flower Message-API strategy (sampling, messages and metric
aggregation are Flower's FedAvg) whose `aggregate_train` validates each reply, combines
the updates and returns the next global adapter. Build one by name with
`build_strategy`, its run-config parameters parsed by `strategies.settings`; the
coordinator checks `strategy.linear` (via `require_linear`) before combining a strategy
with secure aggregation or central DP.
"""

from collections.abc import Callable

from fedvlm.errors import ConfigError
from strategies.base import AdapterStrategy, require_linear
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedprox import FedProx
from strategies.fedyogi import FedYogi
from strategies.ffa import FFALoRA
from strategies.flora import FLoRA
from strategies.hetlora import HetLoRA
from strategies.median import Median
from strategies.trimmed_mean import TrimmedMean
from strategies.validation import Rejection

STRATEGIES: dict[str, Callable[..., AdapterStrategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "ffa-lora": FFALoRA,
    "hetlora": HetLoRA,
    "flora": FLoRA,
    "trimmed-mean": TrimmedMean,
    "median": Median,
}

# Strategies under which a site may train a smaller LoRA rank than the run's.
SITE_RANK_STRATEGIES = tuple(
    name for name, factory in STRATEGIES.items() if getattr(factory, "accepts_site_ranks", False)
)


def build_strategy(name: str, **kwargs: object) -> AdapterStrategy:
    """Build the strategy registered under ``name``.

    Parameters
    ----------
    name : str
        One of `STRATEGIES` (case-insensitive).
    **kwargs
        The strategy's constructor arguments (sampling, ``max_update_norm``, ...).

    Raises
    ------
    ConfigError
        Naming the ``strategy`` key: unknown name (the message lists the valid ones) or
        arguments the strategy does not take.
    """
    factory = STRATEGIES.get(name.strip().lower())
    if factory is None:
        raise ConfigError(
            "strategy", f"unknown strategy '{name}'; valid names: {', '.join(sorted(STRATEGIES))}"
        )
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise ConfigError("strategy", f"invalid arguments for '{name}': {err}") from err


__all__ = [
    "SITE_RANK_STRATEGIES",
    "STRATEGIES",
    "AdapterStrategy",
    "FFALoRA",
    "FLoRA",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FedYogi",
    "HetLoRA",
    "Median",
    "Rejection",
    "TrimmedMean",
    "build_strategy",
    "require_linear",
]
