"""Strategy parameters from the run config reach the strategy that takes them."""

import pytest

from fedvlm.errors import ConfigError
from strategies import FedAdam, FedProx, FLoRA, TrimmedMean, build_strategy
from strategies.settings import StrategySettings

RUN = {
    "proximal-mu": 0.5,
    "server-eta": 0.05,
    "server-beta-1": 0.8,
    "server-beta-2": 0.95,
    "server-tau": 0.01,
    "trim-beta": 0.3,
    "max-update-norm": 4.0,
    "clip-update-norm": 2,
}


def _build(name: str, config: dict, global_rank: int = 8):
    settings = StrategySettings.from_config(config)
    return build_strategy(name, **settings.kwargs_for(name, global_rank=global_rank))


def test_each_strategy_gets_its_own_parameters_from_the_run_config():
    prox = _build("fedprox", RUN)
    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.5
    adam = _build("FedAdam", RUN)
    assert isinstance(adam, FedAdam)
    assert (adam.eta, adam.beta_1, adam.beta_2, adam.tau) == (0.05, 0.8, 0.95, 0.01)
    trimmed = _build("trimmed-mean", RUN)
    assert isinstance(trimmed, TrimmedMean) and trimmed.beta == 0.3
    for strategy in (prox, adam, trimmed):
        assert strategy.max_update_norm == 4.0
        assert strategy.clip_update_norm == 2.0
        assert not strategy.linear  # clipping needs the individual updates


def test_unset_values_keep_each_strategy_default():
    assert _build("fedadam", {}).eta == 0.1
    assert _build("fedyogi", {"server-eta": 0.0}).eta == 0.01
    fedavg = _build("fedavg", {"max-update-norm": 0.0})
    assert fedavg.max_update_norm is None and fedavg.linear


def test_flora_rank_defaults_to_the_run_rank_and_may_not_exceed_it():
    assert isinstance(_build("flora", {}, global_rank=8), FLoRA)
    assert _build("flora", {}, global_rank=8).max_rank == 8
    assert _build("flora", {"flora-max-rank": 4}, global_rank=8).max_rank == 4
    with pytest.raises(ConfigError) as err:
        _build("flora", {"flora-max-rank": 16}, global_rank=8)
    assert err.value.key == "flora-max-rank"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("proximal-mu", -0.1),
        ("server-beta-1", 1.0),
        ("server-tau", -1.0),
        ("trim-beta", 0.5),
        ("max-update-norm", "big"),
        ("flora-max-rank", 2.5),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(key, value):
    with pytest.raises(ConfigError) as err:
        StrategySettings.from_config({key: value})
    assert err.value.key == key
