"""Every reply is checked before aggregation; a rejected reply contributes nothing."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedvlm import contract
from strategies import FedAvg
from strategies.validation import (
    CHECK_DTYPE,
    CHECK_EXAMPLES,
    CHECK_FINITE,
    CHECK_KEYS,
    CHECK_NORM,
    CHECK_RECORDS,
    CHECK_SHAPE,
    InvalidUpdateError,
    check_update,
    spec_of,
)
from tests.strategy_helpers import (
    LORA_A,
    LORA_B,
    PROJECTOR,
    adapter,
    error_reply,
    record,
    reply,
    send,
    task_identity,  # noqa: F401 - autouse fixture
    to_numpy,
)

GOOD_WEIGHTS = [4, 6]


def _with(name, value, base=None):
    update = dict(base or adapter(seed=50, scale=0.01))
    update[name] = value
    return update


def _without(name):
    update = adapter(seed=50, scale=0.01)
    del update[name]
    return update


def _nan():
    value = adapter(seed=50, scale=0.01)[LORA_B].copy()
    value[3, 1] = np.nan
    return _with(LORA_B, value)


def _inf():
    value = adapter(seed=50, scale=0.01)[PROJECTOR].copy()
    value[0, 0] = -np.inf
    return _with(PROJECTOR, value)


# (case id, bad update, bad num-examples, expected check, text the reason must contain)
BAD_CASES = [
    ("nan", _nan(), 10, CHECK_FINITE, LORA_B),
    ("inf", _inf(), 10, CHECK_FINITE, PROJECTOR),
    ("missing-key", _without(LORA_A), 10, CHECK_KEYS, LORA_A),
    ("extra-key", _with("lora_C.weight", np.zeros(3, np.float32)), 10, CHECK_KEYS, "lora_C"),
    ("wrong-shape", _with(LORA_A, np.zeros((4, 17), np.float32)), 10, CHECK_SHAPE, "(4, 17)"),
    ("wrong-dtype", _with(LORA_B, np.zeros((12, 4), np.float64)), 10, CHECK_DTYPE, "float64"),
    ("zero-examples", adapter(seed=50, scale=0.01), 0, CHECK_EXAMPLES, "positive"),
    ("negative-examples", adapter(seed=50, scale=0.01), -5, CHECK_EXAMPLES, "positive"),
    ("fractional-examples", adapter(seed=50, scale=0.01), 2.5, CHECK_EXAMPLES, "integer"),
    ("list-examples", adapter(seed=50, scale=0.01), [1, 2], CHECK_EXAMPLES, "integer"),
    ("norm-too-large", adapter(seed=50, scale=10.0), 10, CHECK_NORM, "exceeds the bound 5"),
]


def _good_updates():
    return [adapter(seed=60 + i, scale=0.01) for i in range(len(GOOD_WEIGHTS))]


def _aggregate(bad_reply_builder=None):
    """Aggregate two good replies, plus one built by ``bad_reply_builder`` if given."""
    global_arrays = adapter(seed=1)
    strategy = FedAvg(min_available_nodes=3, min_train_nodes=3, max_update_norm=5.0)
    messages = send(strategy, global_arrays)
    replies = [
        reply(m, u, w) for m, u, w in zip(messages, _good_updates(), GOOD_WEIGHTS, strict=False)
    ]
    if bad_reply_builder is not None:
        replies.insert(1, bad_reply_builder(messages[2]))
    new_global, _ = strategy.aggregate_train(1, replies)
    return to_numpy(new_global), strategy.last_rejections


@pytest.mark.parametrize(
    ("update", "num_examples", "check", "text"),
    [case[1:] for case in BAD_CASES],
    ids=[case[0] for case in BAD_CASES],
)
def test_bad_reply_is_rejected_with_reason_and_changes_nothing(update, num_examples, check, text):
    clean, clean_rejections = _aggregate()
    assert clean_rejections == []

    got, rejections = _aggregate(lambda m: reply(m, update, num_examples))
    assert len(rejections) == 1
    assert rejections[0].node_id == 13
    assert rejections[0].check == check
    assert text in rejections[0].reason
    for name in clean:
        assert got[name].tobytes() == clean[name].tobytes()


def test_error_reply_is_a_dropout_not_a_rejection_and_changes_nothing():
    clean, _ = _aggregate()
    got, rejections = _aggregate(lambda m: error_reply(m, "CUDA out of memory"))
    assert rejections == []
    for name in clean:
        assert got[name].tobytes() == clean[name].tobytes()


def _raw_reply(instruction, content: RecordDict):
    return Message(content, reply_to=instruction)


@pytest.mark.parametrize(
    "content",
    [
        RecordDict({contract.ARRAYS: record(adapter(seed=50))}),
        RecordDict({contract.METRICS: MetricRecord({contract.NUM_EXAMPLES: 3})}),
        RecordDict(
            {
                "weights": record(adapter(seed=50)),
                contract.METRICS: MetricRecord({contract.NUM_EXAMPLES: 3}),
            }
        ),
        RecordDict(
            {
                contract.ARRAYS: record(adapter(seed=50)),
                "other": ArrayRecord(),
                contract.METRICS: MetricRecord({contract.NUM_EXAMPLES: 3}),
            }
        ),
    ],
    ids=["no-metrics", "no-arrays", "misnamed-arrays", "two-array-records"],
)
def test_reply_with_wrong_records_is_rejected(content):
    _, rejections = _aggregate(lambda m: _raw_reply(m, content))
    assert [r.check for r in rejections] == [CHECK_RECORDS]


def test_missing_num_examples_is_rejected():
    content = RecordDict(
        {
            contract.ARRAYS: record(adapter(seed=50, scale=0.01)),
            contract.METRICS: MetricRecord({contract.TRAIN_LOSS: 1.0}),
        }
    )
    _, rejections = _aggregate(lambda m: _raw_reply(m, content))
    assert [r.check for r in rejections] == [CHECK_EXAMPLES]
    assert "missing" in rejections[0].reason


def test_integral_float_example_count_is_accepted():
    _, rejections = _aggregate(lambda m: reply(m, adapter(seed=50, scale=0.01), 12.0))
    assert rejections == []


def test_norm_bound_is_inclusive_and_optional():
    update = {"w": np.array([3.0, 4.0], dtype=np.float32)}  # L2 norm exactly 5
    spec = spec_of(update)
    check_update(update, spec, max_norm=5.0)
    check_update(update, spec, max_norm=None)
    with pytest.raises(InvalidUpdateError) as err:
        check_update(update, spec, max_norm=4.99)
    assert err.value.check == CHECK_NORM


def test_norm_is_over_all_tensors_together():
    update = {"a": np.array([3.0], np.float32), "b": np.array([4.0], np.float32)}
    with pytest.raises(InvalidUpdateError, match="norm 5"):
        check_update(update, spec_of(update), max_norm=4.5)


def test_rejections_are_counted_per_node_across_rounds_and_checkpointed():
    strategy = FedAvg(min_available_nodes=3, min_train_nodes=3)
    for server_round in (1, 2):
        messages = send(strategy, adapter(seed=1), server_round)
        replies = [
            reply(messages[0], adapter(seed=60, scale=0.01), 4),
            reply(messages[1], _nan(), 4),
            reply(messages[2], adapter(seed=61, scale=0.01), 0 if server_round == 2 else 3),
        ]
        strategy.aggregate_train(server_round, replies)
    assert strategy.rejection_counts == {12: 2, 13: 1}
    resumed = FedAvg()
    resumed.load_state_dict(strategy.state_dict())
    assert resumed.rejection_counts == {12: 2, 13: 1}
