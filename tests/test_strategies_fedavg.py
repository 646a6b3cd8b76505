"""FedAvg on updates: exact weighted mean, metrics, sum path, checkpoint, registry."""

import numpy as np
import pytest
from flwr.serverapp.exception import AggregationError

from fedvlm import contract
from fedvlm.errors import ConfigError
from strategies import STRATEGIES, FedAvg, build_strategy, require_linear
from tests.strategy_helpers import (
    LORA_B,
    adapter,
    reply,
    send,
    task_identity,  # noqa: F401 - autouse fixture
    to_numpy,
)

WEIGHTS = [3, 10, 7]


def _updates() -> list[dict[str, np.ndarray]]:
    return [adapter(seed=100 + i, scale=0.01) for i in range(len(WEIGHTS))]


def _expected(global_arrays, updates, weights):
    total = sum(weights)
    return {
        name: global_arrays[name].astype(np.float64)
        + sum(w * u[name].astype(np.float64) for u, w in zip(updates, weights, strict=True)) / total
        for name in global_arrays
    }


def _round(strategy, global_arrays, updates, weights, server_round=1):
    messages = send(strategy, global_arrays, server_round)
    replies = [
        reply(m, u, w, **{contract.TRAIN_LOSS: float(i)})
        for i, (m, u, w) in enumerate(zip(messages, updates, weights, strict=True))
    ]
    return strategy.aggregate_train(server_round, replies)


def test_aggregate_is_global_plus_weighted_mean_update():
    global_arrays, updates = adapter(seed=1), _updates()
    strategy = FedAvg(min_available_nodes=3, min_train_nodes=3)
    new_global, metrics = _round(strategy, global_arrays, updates, WEIGHTS)

    got = to_numpy(new_global)
    expected = _expected(global_arrays, updates, WEIGHTS)
    assert set(got) == set(global_arrays)
    for name in expected:
        assert got[name].dtype == np.float32 and got[name].shape == global_arrays[name].shape
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6)
    # Metrics are Flower's weighted mean; the weight key itself is left out.
    assert metrics[contract.TRAIN_LOSS] == pytest.approx((0 * 3 + 1 * 10 + 2 * 7) / 20)
    assert contract.NUM_EXAMPLES not in metrics
    assert strategy.last_rejections == []


def test_weighting_is_by_num_examples_not_uniform():
    global_arrays, updates = adapter(seed=1), _updates()
    got = to_numpy(_round(FedAvg(min_available_nodes=3), global_arrays, updates, [1, 1, 98])[0])
    weighted = _expected(global_arrays, updates, [1, 1, 98])
    uniform = _expected(global_arrays, updates, [1, 1, 1])
    np.testing.assert_allclose(got[LORA_B], weighted[LORA_B], rtol=0, atol=1e-6)
    assert np.abs(got[LORA_B] - uniform[LORA_B]).max() > 1e-3


def test_configure_train_sends_global_and_round_to_sampled_nodes():
    global_arrays = adapter(seed=1)
    messages = send(FedAvg(min_available_nodes=3), global_arrays, server_round=4)
    assert [m.metadata.dst_node_id for m in messages] == [11, 12, 13]
    content = messages[0].content
    assert content[contract.CONFIG][contract.SERVER_ROUND] == 4
    for name, value in to_numpy(content[contract.ARRAYS]).items():
        np.testing.assert_array_equal(value, global_arrays[name])


def test_apply_update_sum_matches_aggregate_train():
    global_arrays, updates = adapter(seed=1), _updates()
    via_replies = to_numpy(
        _round(FedAvg(min_available_nodes=3), global_arrays, updates, WEIGHTS)[0]
    )

    strategy = FedAvg(min_available_nodes=3)
    send(strategy, global_arrays)
    update_sum = {
        name: sum(w * u[name].astype(np.float64) for u, w in zip(updates, WEIGHTS, strict=True))
        for name in global_arrays
    }
    via_sum = to_numpy(strategy.apply_update_sum(1, update_sum, float(sum(WEIGHTS))))
    for name in via_replies:
        np.testing.assert_allclose(via_sum[name], via_replies[name], rtol=0, atol=1e-6)


def test_the_strategy_owns_its_rejections_and_the_client_level_sum():
    """The client-level DP path validates through `accept_replies` with its own norm bound and
    sums through `aggregate_sum`: the strategy records the rejection, nobody writes its
    attributes from outside, and the sum is the unit-weight sum handed to the noise."""
    global_arrays, updates = adapter(seed=1), _updates()
    strategy = FedAvg(min_available_nodes=3)
    sent = send(strategy, global_arrays)
    huge = {name: tensor * 1e4 for name, tensor in updates[2].items()}
    replies = [reply(sent[0], updates[0]), reply(sent[1], updates[1]), reply(sent[2], huge)]
    accepted = strategy.accept_replies(replies, max_norm=1.0)
    assert [a.node_id for a in accepted] == [11, 12]
    assert [r.node_id for r in strategy.last_rejections] == [13]
    assert strategy.rejection_counts[13] == 1

    seen = {}

    def no_noise(update_sum, num_sites):
        seen.update(update_sum=update_sum, num_sites=num_sites)
        return update_sum

    new_global, metrics = strategy.aggregate_sum(1, accepted, no_noise)
    assert seen["num_sites"] == 2 and metrics is not None
    expected = _expected(global_arrays, updates[:2], [1, 1])
    for name, value in to_numpy(new_global).items():
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=1e-6)
    assert strategy.aggregate_sum(2, [], no_noise) == (None, None)


def test_apply_update_sum_rejects_a_sum_that_does_not_fit():
    global_arrays = adapter(seed=1)
    strategy = FedAvg(min_available_nodes=3)
    send(strategy, global_arrays)
    bad = {name: np.zeros_like(v) for name, v in global_arrays.items()}
    bad.popitem()
    with pytest.raises(AggregationError, match="keys"):
        strategy.apply_update_sum(1, bad, 1.0)
    with pytest.raises(AggregationError, match="weight"):
        strategy.apply_update_sum(1, {k: np.zeros_like(v) for k, v in global_arrays.items()}, 0)


def test_state_dict_resume_is_bit_identical():
    global_arrays = adapter(seed=1)
    first = FedAvg(min_available_nodes=3)
    _round(first, global_arrays, _updates(), WEIGHTS, server_round=1)
    state = first.state_dict()
    assert state["round"] == 1

    resumed = FedAvg(min_available_nodes=3)
    resumed.load_state_dict(state)
    round2 = [adapter(seed=200 + i, scale=0.01) for i in range(3)]
    original = to_numpy(_round(first, first.current_global, round2, WEIGHTS, server_round=2)[0])
    again = to_numpy(_round(resumed, resumed.current_global, round2, WEIGHTS, server_round=2)[0])
    for name in original:
        assert original[name].tobytes() == again[name].tobytes()


def test_no_accepted_reply_returns_none_and_keeps_global():
    global_arrays = adapter(seed=1)
    strategy = FedAvg(min_available_nodes=3)
    messages = send(strategy, global_arrays)
    bad = [reply(m, adapter(seed=5), num_examples=0) for m in messages]
    assert strategy.aggregate_train(1, bad) == (None, None)
    assert len(strategy.last_rejections) == 3
    for name, value in strategy.current_global.items():
        np.testing.assert_array_equal(value, global_arrays[name])


def test_aggregate_before_configure_is_an_error():
    with pytest.raises(AggregationError, match="configure_train"):
        FedAvg().aggregate_train(1, [])


def test_fedavg_is_linear():
    require_linear(FedAvg(), "secure aggregation is on")  # does not raise


def test_build_strategy_by_name_and_errors():
    strategy = build_strategy("FedAvg", min_train_nodes=3, max_update_norm=5.0)
    assert isinstance(strategy, FedAvg)
    assert strategy.min_train_nodes == 3 and strategy.max_update_norm == 5.0
    with pytest.raises(ConfigError, match="valid names: .*fedavg") as err:
        build_strategy("fedsgd")
    assert err.value.key == "strategy"
    with pytest.raises(ConfigError, match="invalid arguments for 'fedavg'"):
        build_strategy("fedavg", proximal_mu=0.1)
    with pytest.raises(ConfigError, match="max-update-norm"):
        build_strategy("fedavg", max_update_norm=0.0)
    assert "fedavg" in STRATEGIES
