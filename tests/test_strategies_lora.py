"""LoRA-aware aggregation: FFA-LoRA, exact stacking (FLoRA), zero-padding (HetLoRA)."""

import numpy as np
import pytest

from fedvlm import contract
from fedvlm.lora_factors import (
    exchanged_keys,
    lora_pairs,
    pad_to_shapes,
    refactor_by_importance,
    stack_factors,
    truncate_to_rank,
)
from strategies import FFALoRA, FLoRA, HetLoRA
from strategies.validation import CHECK_KEYS, CHECK_SHAPE
from tests.strategy_helpers import (
    LORA_A,
    LORA_B,
    PROJECTOR,
    adapter,
    reply,
    send,
    task_identity,  # noqa: F401 - autouse fixture
    to_numpy,
)

WEIGHTS = [5, 20, 9]


def _weighted_mean(items, weights):
    return sum(w * np.asarray(x, np.float64) for x, w in zip(items, weights, strict=True)) / sum(
        weights
    )


# --- helpers ------------------------------------------------------------------------


def test_exchanged_keys_drop_every_a_factor_and_keep_order():
    names = [
        "m.q_proj.lora_A.weight",
        "m.q_proj.lora_B.weight",
        "m.embed_tokens.lora_embedding_A",
        "m.embed_tokens.lora_embedding_B",
        "m.multi_modal_projector.linear_1.modules_to_save.default.weight",
    ]
    assert exchanged_keys(names) == [names[1], names[3], names[4]]
    assert lora_pairs(names) == [(names[0], names[1]), (names[2], names[3])]


def test_truncate_and_pad_are_inverse_on_the_kept_components():
    full = adapter(seed=3, rank=8)
    small = truncate_to_rank(full, 2)
    assert small[LORA_A].shape == (2, 16) and small[LORA_B].shape == (12, 2)
    np.testing.assert_array_equal(small[PROJECTOR], full[PROJECTOR])
    padded = pad_to_shapes(small, {k: v.shape for k, v in full.items()})
    np.testing.assert_array_equal(padded[LORA_A][:2], full[LORA_A][:2])
    assert not padded[LORA_A][2:].any() and not padded[LORA_B][:, 2:].any()


def test_refactor_keeps_the_product_and_orders_by_importance():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 16)), rng.standard_normal((12, 6))
    new_a, new_b = refactor_by_importance(a, b, rank=6)
    np.testing.assert_allclose(new_b @ new_a, b @ a, atol=1e-10)
    singular = np.linalg.svd(b @ a, compute_uv=False)
    for k in (1, 3):  # first k components: the best rank-k approximation (Eckart-Young)
        error = np.linalg.norm(new_b[:, :k] @ new_a[:k] - b @ a, 2)
        assert error == pytest.approx(singular[k], rel=1e-9)


# --- FFA-LoRA -----------------------------------------------------------------------


def test_ffa_aggregate_of_b_is_mean_of_b_and_product_is_mean_delta_w():
    global_arrays = adapter(seed=1)
    strategy = FFALoRA(min_available_nodes=3)
    messages = send(strategy, global_arrays)
    assert messages[0].content[contract.CONFIG][contract.FREEZE_LORA_A] is True
    updates = [
        {k: v for k, v in adapter(seed=40 + i, scale=0.05).items() if k != LORA_A} for i in range(3)
    ]
    new_global, _ = strategy.aggregate_train(
        1, [reply(m, u, w) for m, u, w in zip(messages, updates, WEIGHTS, strict=True)]
    )
    got = to_numpy(new_global)
    assert strategy.last_rejections == []

    a = global_arrays[LORA_A]
    assert got[LORA_A].tobytes() == a.tobytes()  # A never moves
    site_b = [global_arrays[LORA_B] + u[LORA_B] for u in updates]
    np.testing.assert_allclose(got[LORA_B], _weighted_mean(site_b, WEIGHTS), atol=1e-6)
    mean_delta_w = _weighted_mean([b_i @ a for b_i in site_b], WEIGHTS)
    np.testing.assert_allclose(got[LORA_B] @ a, mean_delta_w, atol=1e-6)


def test_ffa_rejects_an_update_of_a():
    global_arrays = adapter(seed=1)
    strategy = FFALoRA(min_available_nodes=3)
    messages = send(strategy, global_arrays)
    full_update = adapter(seed=40, scale=0.05)  # still carries lora_A
    strategy.aggregate_train(1, [reply(messages[0], full_update, 5)])
    assert [(r.check, LORA_A in r.reason) for r in strategy.last_rejections] == [(CHECK_KEYS, True)]


# --- heterogeneous ranks ------------------------------------------------------------

RANKS = [2, 4, 8]


def _hetero_round(strategy):
    """Sites of ranks 2/4/8 train on a rank-8 global; returns (global, updates, result)."""
    global_arrays = adapter(seed=1, rank=8)
    messages = send(strategy, global_arrays)
    updates = [
        truncate_to_rank(adapter(seed=70 + i, rank=8, scale=0.1), r) for i, r in enumerate(RANKS)
    ]
    replies = [reply(m, u, w) for m, u, w in zip(messages, updates, WEIGHTS, strict=True)]
    new_global, _ = strategy.aggregate_train(1, replies)
    assert strategy.last_rejections == []
    return global_arrays, updates, to_numpy(new_global)


def test_stacking_reproduces_mean_of_site_products():
    global_arrays, updates, got = _hetero_round(FLoRA(min_available_nodes=3))
    site_products = []
    for rank, update in zip(RANKS, updates, strict=True):
        local = truncate_to_rank(global_arrays, rank)
        site_products.append((local[LORA_B] + update[LORA_B]) @ (local[LORA_A] + update[LORA_A]))
    assert got[LORA_A].shape == (sum(RANKS), 16) and got[LORA_B].shape == (12, sum(RANKS))
    np.testing.assert_allclose(
        got[LORA_B].astype(np.float64) @ got[LORA_A],
        _weighted_mean(site_products, WEIGHTS),
        atol=1e-5,
    )
    expected_projector = global_arrays[PROJECTOR] + _weighted_mean(
        [u[PROJECTOR] for u in updates], WEIGHTS
    )
    np.testing.assert_allclose(got[PROJECTOR], expected_projector, atol=1e-6)


def test_stacked_factors_are_exact_before_refactoring():
    rng = np.random.default_rng(5)
    factors = [(rng.standard_normal((r, 16)), rng.standard_normal((12, r))) for r in RANKS]
    a, b = stack_factors(factors, WEIGHTS)
    expected = _weighted_mean([b_i @ a_i for a_i, b_i in factors], WEIGHTS)
    np.testing.assert_allclose(b @ a, expected, atol=1e-12)


def test_stacking_is_not_linear():
    assert FLoRA().linear is False


def test_zero_padding_keeps_shapes_and_equals_padded_weighted_mean():
    global_arrays, updates, got = _hetero_round(HetLoRA(min_available_nodes=3))
    shapes = {k: v.shape for k, v in global_arrays.items()}
    for name in global_arrays:
        assert got[name].shape == global_arrays[name].shape
        padded = [pad_to_shapes(u, shapes)[name] for u in updates]
        np.testing.assert_allclose(
            got[name], global_arrays[name] + _weighted_mean(padded, WEIGHTS), atol=1e-6
        )


def test_zero_padding_is_linear_and_runs_from_the_padded_sum():
    strategy = HetLoRA(min_available_nodes=3)
    assert strategy.linear
    global_arrays, updates, via_replies = _hetero_round(strategy)

    from_sum = HetLoRA(min_available_nodes=3)
    send(from_sum, global_arrays)
    shapes = {k: v.shape for k, v in global_arrays.items()}
    update_sum = {
        name: sum(
            w * pad_to_shapes(u, shapes)[name].astype(np.float64)
            for u, w in zip(updates, WEIGHTS, strict=True)
        )
        for name in global_arrays
    }
    via_sum = to_numpy(from_sum.apply_update_sum(1, update_sum, float(sum(WEIGHTS))))
    for name in via_replies:
        np.testing.assert_allclose(via_sum[name], via_replies[name], atol=1e-6)


@pytest.mark.parametrize("strategy_cls", [HetLoRA, FLoRA])
def test_variable_rank_updates_are_still_checked(strategy_cls):
    strategy = strategy_cls(min_available_nodes=3)
    messages = send(strategy, adapter(seed=1, rank=4))
    too_big = adapter(seed=2, rank=6, scale=0.1)
    mismatched = {**truncate_to_rank(adapter(seed=2, rank=4, scale=0.1), 2)}
    mismatched[LORA_B] = adapter(seed=2, rank=3, scale=0.1)[LORA_B]
    strategy.aggregate_train(1, [reply(messages[0], too_big, 3), reply(messages[1], mismatched, 3)])
    assert [r.check for r in strategy.last_rejections] == [CHECK_SHAPE, CHECK_SHAPE]
    assert "rank 2" in strategy.last_rejections[1].reason
