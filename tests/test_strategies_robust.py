"""Robust rules (trimmed mean, median, norm bounding), FedProx, and the linearity gate."""

import numpy as np
import pytest
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from fedvlm import contract
from fedvlm.errors import ConfigError
from strategies import (
    STRATEGIES,
    FedAvg,
    FedProx,
    Median,
    TrimmedMean,
    build_strategy,
    require_linear,
)
from tests.strategy_helpers import (
    adapter,
    reply,
    send,
    task_identity,  # noqa: F401 - autouse fixture
    to_numpy,
)

NODES = (11, 12, 13, 14, 15)


def _round(strategy, updates, weights=None):
    global_arrays = adapter(seed=1)
    messages = send(strategy, global_arrays, nodes=NODES[: len(updates)])
    weights = weights or [10] * len(updates)
    replies = [reply(m, u, w) for m, u, w in zip(messages, updates, weights, strict=True)]
    return global_arrays, to_numpy(strategy.aggregate_train(1, replies)[0])


def _honest_and_one_attacker():
    updates = [adapter(seed=80 + i, scale=0.01) for i in range(4)]
    updates.append(adapter(seed=99, scale=1000.0))  # one poisoned update
    return updates


def test_trimmed_mean_is_flowers_trim_mean_of_updates_and_resists_one_outlier():
    updates = _honest_and_one_attacker()
    global_arrays, got = _round(TrimmedMean(beta=0.2, min_available_nodes=5), updates)
    for name in global_arrays:
        expected = trim_mean(np.stack([u[name] for u in updates]).astype(np.float64), 0.2)
        np.testing.assert_allclose(got[name], global_arrays[name] + expected, atol=1e-6)
        assert np.abs(got[name] - global_arrays[name]).max() < 0.1  # attacker trimmed away


def test_median_is_coordinatewise_median_of_updates():
    updates = _honest_and_one_attacker()
    global_arrays, got = _round(Median(min_available_nodes=5), updates)
    for name in global_arrays:
        expected = np.median(np.stack([u[name] for u in updates]), axis=0)
        np.testing.assert_allclose(got[name], global_arrays[name] + expected, atol=1e-6)


def test_fedavg_is_dragged_by_the_same_outlier():
    global_arrays, got = _round(FedAvg(min_available_nodes=5), _honest_and_one_attacker())
    assert max(np.abs(got[n] - global_arrays[n]).max() for n in got) > 10


def test_norm_bounding_scales_large_updates_down_to_the_bound():
    updates = [adapter(seed=80 + i, scale=0.01) for i in range(2)]
    big = adapter(seed=99, scale=1.0)
    big_norm = np.sqrt(sum(np.sum(t.astype(np.float64) ** 2) for t in big.values()))
    updates.append(big)
    strategy = FedAvg(clip_update_norm=1.0, min_available_nodes=3)
    global_arrays, got = _round(strategy, updates, [1, 1, 1])
    clipped = [updates[0], updates[1], {k: v / big_norm for k, v in big.items()}]
    for name in global_arrays:
        mean = sum(u[name].astype(np.float64) for u in clipped) / 3
        np.testing.assert_allclose(got[name], global_arrays[name] + mean, atol=1e-6)
    assert strategy.last_rejections == []  # bounded, not rejected


def test_trim_beta_is_checked():
    with pytest.raises(ConfigError, match="trim-beta"):
        TrimmedMean(beta=0.5)


def test_fedprox_sends_proximal_mu_and_aggregates_as_fedavg():
    updates = [adapter(seed=80 + i, scale=0.01) for i in range(3)]
    prox = FedProx(proximal_mu=0.25, min_available_nodes=3)
    messages = send(prox, adapter(seed=1))
    assert messages[0].content[contract.CONFIG][contract.PROXIMAL_MU] == 0.25
    _, got = _round(FedProx(proximal_mu=0.25, min_available_nodes=5), updates + updates[:2])
    _, plain = _round(FedAvg(min_available_nodes=5), updates + updates[:2])
    for name in got:
        assert got[name].tobytes() == plain[name].tobytes()


@pytest.mark.parametrize(
    ("name", "linear"),
    [
        ("fedavg", True),
        ("fedprox", True),
        ("fedadam", True),
        ("fedyogi", True),
        ("ffa-lora", True),
        ("hetlora", True),
        ("flora", False),
        ("trimmed-mean", False),
        ("median", False),
    ],
)
def test_every_strategy_declares_linearity_and_the_gate_enforces_it(name, linear):
    strategy = build_strategy(name)
    assert strategy.linear is linear
    if linear:
        require_linear(strategy, "secure aggregation is on")
    else:
        with pytest.raises(ConfigError, match="secure aggregation is on") as err:
            require_linear(strategy, "secure aggregation is on")
        assert err.value.key == "strategy"
    assert set(STRATEGIES) == {
        "fedavg", "fedprox", "fedadam", "fedyogi", "ffa-lora", "hetlora", "flora",
        "trimmed-mean", "median",
    }  # fmt: skip


def test_clipping_makes_a_linear_strategy_non_linear():
    strategy = build_strategy("fedavg", clip_update_norm=1.0)
    with pytest.raises(ConfigError, match="FedAvg needs each site's individual update"):
        require_linear(strategy, "client-level DP noise is added to the sum")


def test_apply_update_sum_refuses_a_non_linear_strategy():
    strategy = Median(min_available_nodes=3)
    global_arrays = adapter(seed=1)
    send(strategy, global_arrays)
    with pytest.raises(ConfigError, match="only learns the sum"):
        strategy.apply_update_sum(1, {k: np.zeros_like(v) for k, v in global_arrays.items()}, 3)
