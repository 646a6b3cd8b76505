"""SecAgg+ recovers exactly the survivors' weighted sum, with dropouts at every stage."""

import numpy as np
import pytest

from privacy.secagg import RoundFailedError, SecAggConfig, Stage, run_protocol_in_memory


def _inputs(n: int, d: int, seed: int, max_weight: int = 1):
    rng = np.random.default_rng(seed)
    updates = [rng.uniform(-1.2, 1.2, d).astype(np.float32) for _ in range(n)]
    weights = [int(w) for w in rng.integers(0 if max_weight > 1 else 1, max_weight + 1, n)]
    return updates, weights


def _check_sum(run, updates, weights, config):
    result = run.result
    clipped = [np.clip(u.astype(np.float64), -config.clip, config.clip) for u in updates]
    expected = sum(weights[i] * clipped[i] for i in result.survivors)
    assert result.total_weight == sum(weights[i] for i in result.survivors)
    # Each coordinate of each client is rounded by less than one step, times its weight.
    bound = config.step * result.total_weight + 1e-9
    assert np.abs(result.weighted_sum - expected).max() <= bound


@pytest.mark.parametrize(
    ("n", "degree", "threshold"), [(3, 2, 2), (10, 4, 3), (10, 9, 5), (25, 8, 5), (40, 0, 0)]
)
def test_sum_matches_plain_weighted_sum(n, degree, threshold):
    # The arithmetic at chosen (k, t), some below what a colluding site allows: no corrupt
    # site is assumed here (test_secagg_bounds covers which (k, t) a threat model accepts).
    config = SecAggConfig(
        num_clients=n,
        clip=1.0,
        levels=1 << 12,
        max_weight=50,
        degree=degree,
        threshold=threshold,
        corrupt_fraction=0.0,
    )
    updates, weights = _inputs(n, 300, seed=n + degree)
    run = run_protocol_in_memory(updates, weights, config)
    assert run.result.survivors == list(range(n))
    _check_sum(run, updates, weights, config)


def test_quantisation_is_unbiased():
    n, d = 5, 40_000
    config = SecAggConfig(num_clients=n, clip=1.0, levels=16)
    updates, weights = _inputs(n, d, seed=3)
    run = run_protocol_in_memory(updates, weights, config)
    clipped = [np.clip(u.astype(np.float64), -1, 1) for u in updates]
    error = run.result.weighted_sum - sum(clipped)
    # Per coordinate the error has std <= step * sqrt(n) / 2; its mean over d shrinks by sqrt(d).
    assert abs(error.mean()) < 5 * config.step * np.sqrt(n) / 2 / np.sqrt(d)
    assert error.std() > 0.1 * config.step  # rounding is stochastic, not deterministic


def test_largest_possible_sum_does_not_wrap():
    # 5 clients x 51 levels hit 255 exactly: the smallest container (uint8) must still hold it.
    config = SecAggConfig(num_clients=5, clip=2.0, levels=52)
    assert config.dtype == np.uint8
    updates = [np.full(64, 9.0, dtype=np.float32) for _ in range(5)]  # clipped to +2
    run = run_protocol_in_memory(updates, None, config)
    np.testing.assert_allclose(run.result.weighted_sum, 10.0)
    assert run.result.total_weight == 5


# A site missing at the reveal aborts the round (test_secagg_graph_seed): it is no dropout.
SURVIVABLE = [s for s in Stage if s != Stage.REVEAL]


@pytest.mark.parametrize("stage", SURVIVABLE)
def test_one_dropout_at_each_stage(stage):
    n = 12
    config = SecAggConfig(num_clients=n, clip=1.0, max_weight=20, degree=6, threshold=4)
    updates, weights = _inputs(n, 200, seed=7)
    run = run_protocol_in_memory(updates, weights, config, drop_at={stage: {5}})
    assert run.result.dropped[stage.value] == [5]
    in_sum = stage in (Stage.CONSISTENCY, Stage.UNMASK)  # its masked input already arrived
    assert (5 in run.result.survivors) == in_sum
    assert len(run.result.survivors) == n - (not in_sum)
    _check_sum(run, updates, weights, config)


@pytest.mark.parametrize("stage", SURVIVABLE)
def test_thirty_percent_dropout_at_each_stage(stage):
    n = 20
    config = SecAggConfig(num_clients=n, clip=1.0, max_weight=20, degree=19, threshold=11)
    updates, weights = _inputs(n, 200, seed=11)
    dropped = {1, 4, 8, 13, 17, 19}
    run = run_protocol_in_memory(updates, weights, config, drop_at={stage: dropped})
    in_sum = stage in (Stage.CONSISTENCY, Stage.UNMASK)
    expected = set(range(n)) if in_sum else set(range(n)) - dropped
    assert set(run.result.survivors) == expected
    _check_sum(run, updates, weights, config)


def test_dropouts_spread_over_all_stages_in_a_sparse_graph():
    n = 30
    config = SecAggConfig(num_clients=n, clip=0.5, max_weight=9, degree=12, threshold=8)
    updates, weights = _inputs(n, 500, seed=5, max_weight=9)
    drops = {Stage.SETUP: {0}, Stage.SHARE_KEYS: {9}, Stage.MASKED_INPUT: {17}, Stage.UNMASK: {25}}
    run = run_protocol_in_memory(updates, weights, config, drop_at=drops, client_ids=range(n))
    assert set(run.result.survivors) == set(range(n)) - {0, 9, 17}
    _check_sum(run, updates, weights, config)


def test_large_flower_node_ids_work():
    n = 6
    ids = [2**64 - 1 - 977 * i for i in range(n)]
    # One dropout of 6 stated (dropout fraction 0.2): degree 4, threshold 3 survive it.
    config = SecAggConfig(num_clients=n, clip=1.0, dropout_fraction=0.2)
    updates, weights = _inputs(n, 50, seed=2)
    run = run_protocol_in_memory(
        updates, weights, config, drop_at={Stage.MASKED_INPUT: {ids[2]}}, client_ids=ids
    )
    survivors = [ids.index(c) for c in run.result.survivors]
    expected = sum(np.clip(updates[i], -1, 1).astype(np.float64) for i in survivors)
    assert np.abs(run.result.weighted_sum - expected).max() <= config.step * len(survivors)


def test_too_many_dropouts_fail_the_round_clearly():
    n = 10
    config = SecAggConfig(num_clients=n, clip=1.0, degree=9, threshold=6)
    updates, weights = _inputs(n, 20, seed=1)
    with pytest.raises(RoundFailedError, match=r"shares of the self-mask seed of client \d+"):
        run_protocol_in_memory(updates, weights, config, drop_at={Stage.UNMASK: {0, 1, 2, 3, 4}})
    with pytest.raises(RoundFailedError, match="completed setup"):
        run_protocol_in_memory(updates, weights, config, drop_at={Stage.SETUP: set(range(5))})


def test_the_small_federation_warning_says_the_truth_about_one_dropout():
    """`SecureAggregationSettings.dropout_warning` warns at 4 sites and not at 10: at the
    default threat model (one colluding site, dropout fraction 0.1), one site lost after key
    sharing fails a round of 4 (degree 2, threshold 2) and not one of 10 (degree 4,
    threshold 3)."""
    for n, survives in ((4, False), (10, True)):
        config = SecAggConfig(num_clients=n, clip=1.0)
        assert (config.dropouts_survived >= 1) == survives
        updates, weights = _inputs(n, 50, seed=n)
        drop = {Stage.MASKED_INPUT: {1}}
        if survives:
            run = run_protocol_in_memory(updates, weights, config, drop_at=drop)
            _check_sum(run, updates, weights, config)
        else:
            with pytest.raises(RoundFailedError):
                run_protocol_in_memory(updates, weights, config, drop_at=drop)
