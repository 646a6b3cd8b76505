"""Sites that vanish: bounded waits, who dropped, and a clear stop below the minimum."""

import pytest

from coordinator.liveness import (
    NotEnoughSitesError,
    dropped_nodes,
    error_reasons,
    evaluation_messages,
    require_replies,
    wait_for_nodes,
)
from strategies import build_strategy
from tests.strategy_helpers import (  # noqa: F401  (task_identity is an autouse fixture)
    FakeGrid,
    adapter,
    error_reply,
    record,
    reply,
    send,
    task_identity,
)


def test_wait_for_nodes_is_bounded_and_names_the_keys():
    assert wait_for_nodes(FakeGrid([1, 2, 3]), 2, timeout=0.1) == [1, 2, 3]
    with pytest.raises(NotEnoughSitesError, match="only 1 of the 2 sites.*node-wait-timeout"):
        wait_for_nodes(FakeGrid([1]), 2, timeout=0.2, poll=0.05)


def test_a_node_that_errs_or_never_answers_is_dropped():
    strategy = build_strategy("fedavg", min_available_nodes=3, min_train_nodes=3)
    global_arrays = adapter()
    sent = send(strategy, global_arrays, nodes=(11, 12, 13))
    replies = [reply(sent[0], adapter(1)), error_reply(sent[1])]  # 13 timed out: no reply
    assert dropped_nodes(sent, replies) == [12, 13]
    require_replies(1, answered=1, minimum=1, dropped=[12, 13])
    with pytest.raises(NotEnoughSitesError, match=r"round 4: only 1 site.*\[12, 13\]"):
        require_replies(4, answered=1, minimum=2, dropped=[12, 13])


def test_evaluation_is_sampled_only_from_connected_survivors_and_never_waits():
    """A site died mid-round: 2 of min-available-nodes = 3 are left connected.

    Flower's own ``configure_evaluate`` would poll ``get_node_ids()`` forever here (the
    hang this guards against); removing the cap on the strategy's minimums in
    ``evaluation_messages`` makes this test hang instead of passing.
    """
    strategy = build_strategy("fedavg", min_available_nodes=3, min_train_nodes=3)
    grid = FakeGrid([11, 12])  # node 13 is gone
    messages = evaluation_messages(strategy, grid, 1, record(adapter()), candidates=[11, 13])
    assert [m.metadata.dst_node_id for m in messages] == [11]
    assert strategy.min_available_nodes == 3  # the strategy itself is not changed
    everyone = evaluation_messages(strategy, grid, 0, record(adapter()))
    assert sorted(m.metadata.dst_node_id for m in everyone) == [11, 12]
    assert evaluation_messages(strategy, grid, 1, record(adapter()), candidates=[13]) == []


def test_too_few_replies_name_each_sites_own_error_and_carry_it_for_the_ledger():
    strategy = build_strategy("fedavg", min_available_nodes=2, min_train_nodes=2)
    sent = send(strategy, adapter(), nodes=(11, 12))
    replies = [error_reply(sent[0]), error_reply(sent[1])]
    errors = error_reasons(replies)
    assert set(errors) == {"11", "12"} and all(errors.values())
    with pytest.raises(NotEnoughSitesError, match=r"(?s)only 0 site.*node 11: .+node 12: ") as e:
        require_replies(3, answered=0, minimum=2, dropped=[11, 12], replies=replies)
    assert e.value.details == {"dropped": [11, 12], "errors": errors}
