"""Flower's fixed polling waits, shortened where a deployed round spends them.

- the coordinator collects replies within a tenth of the time waited (Flower's HttpGrid: 3 s),
  with Flower's contract: all replies, error replies included, or those in by the timeout;
- `fedvlm node` runs Flower's SuperNode with its sleeps shortened (`client.prompt_supernode`),
  which relies on how the pinned flwr's main loop waits: checked here on its source.
"""

import ast
import inspect
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, RecordDict
from flwr.supercore.superexec import run_superexec
from flwr.superlink.grid import HttpGrid
from flwr.supernode import start_client_internal

import client.prompt_supernode as prompt_supernode
from client.launch import POLL_SECONDS, SUPEREXEC_POLL_ENV, NodeOptions, supernode_command
from coordinator import exchange
from fedvlm.polling import next_wait

pytestmark = pytest.mark.usefixtures("serverapp_identity")  # Messages made as the ServerApp


def _message(node: int) -> Message:
    content = RecordDict({"a": ArrayRecord({"x": Array(np.zeros(2, np.float32))})})
    message = Message(content, node, MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = f"m{node}"
    return message


class SlowGrid:
    """Answers node n's message at the n-th pull (node 3 with an error); counts pulls."""

    def __init__(self) -> None:
        self.pulls = 0
        self.sent: dict[str, Message] = {}

    def push_messages(self, messages):
        self.sent = {m.metadata.message_id: m for m in messages}
        return list(self.sent)

    def pull_messages(self, ids):
        self.pulls += 1
        out = []
        for i in ids:
            message = self.sent[i]
            if message.metadata.dst_node_id == self.pulls:
                if self.pulls == 3:
                    out.append(Message(Error(code=0, reason="failed"), reply_to=message))
                else:
                    out.append(Message(RecordDict(), reply_to=message))
        return out

    def get_node_ids(self):
        return [1, 2, 3]


def test_replies_are_pulled_at_the_short_interval_until_all_are_in(monkeypatch):
    waits = []
    monkeypatch.setattr(exchange.time, "sleep", waits.append)
    grid = SlowGrid()
    replies = exchange.PromptReplies(grid).send_and_receive(
        [_message(n) for n in (1, 2, 3)], timeout=60
    )
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m1", "m2", "m3"]
    assert sum(r.has_error() for r in replies) == 1  # an error reply is a reply
    assert grid.pulls == 3 and waits == [exchange.FIRST_PULL] * 2  # nothing waited yet
    assert exchange.PromptReplies(grid).get_node_ids() == [1, 2, 3]  # the rest is the grid's


def test_the_timeout_ends_the_wait_with_the_replies_in_so_far(monkeypatch):
    monkeypatch.setattr(exchange.time, "sleep", lambda s: None)
    replies = exchange.PromptReplies(SlowGrid()).send_and_receive(
        [_message(n) for n in (1, 2, 3)], timeout=0
    )
    assert [r.metadata.reply_to_message_id for r in replies] == ["m1"]


def test_only_flowers_deployed_grid_is_wrapped():
    deployed = HttpGrid.__new__(HttpGrid)  # no connection needed to tell the type
    assert isinstance(exchange.prompt_replies(deployed), exchange.PromptReplies)
    other = SlowGrid()
    assert exchange.prompt_replies(other) is other


def test_the_pinned_supernode_waits_only_through_time_sleep():
    """What `prompt_supernode.install` relies on: every use of ``time`` in Flower's SuperNode
    main loop is a ``time.sleep`` (the idle 3 s poll and the 0.5 s reply polls)."""
    tree = ast.parse(inspect.getsource(start_client_internal))
    uses = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "time"
    ]
    assert uses and set(uses) == {"sleep"}
    waits = [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "sleep"
        and isinstance(node.args[0], ast.Constant)
    ]
    assert max(waits) == 3  # the idle poll this module shortens


def test_wait_is_a_tenth_of_the_time_waited_between_floor_and_ceiling():
    assert [next_wait(w, 0.1, 3.0) for w in (0.0, 0.5, 10.0, 25.0, 600.0)] == [
        0.1,
        0.1,
        1.0,
        2.5,
        3.0,
    ]


def test_install_shortens_the_supernodes_sleeps_and_backs_off_while_idle(monkeypatch):
    slept, clock = [], [0.0]
    monkeypatch.setattr(time, "sleep", slept.append)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(start_client_internal, "time", time)
    prompt_supernode.install(start_client_internal, 0.2)
    sleep = start_client_internal.time.sleep
    for now in (0.0, 10.0, 100.0):  # idle polls (Flower's 3 s) at these times
        clock[0] = now
        sleep(3)
    sleep(0.5)  # a message came: waiting for the ClientApp's reply; idle time starts again
    clock[0] = 200.0
    sleep(3)
    assert slept == [0.2, 1.0, 3, 0.2, 0.2]
    assert start_client_internal.time.perf_counter is time.perf_counter


def test_node_runs_the_prompt_supernode_with_the_poll_intervals(tmp_path, monkeypatch):
    command = supernode_command(NodeOptions("127.0.0.1:1", tmp_path, insecure=True), 9100)
    assert command[1:3] == ["-m", "client.prompt_supernode"]
    assert POLL_SECONDS[prompt_supernode.POLL_ENV] < 3
    # The variable the pinned flwr's SuperExec reads, and a value it accepts.
    assert SUPEREXEC_POLL_ENV == run_superexec._TASK_POLL_INTERVAL_ENV
    monkeypatch.setenv(SUPEREXEC_POLL_ENV, str(POLL_SECONDS[SUPEREXEC_POLL_ENV]))
    assert run_superexec._get_task_poll_interval() == POLL_SECONDS[SUPEREXEC_POLL_ENV] < 1.0
