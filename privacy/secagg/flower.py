"""Carry SecAgg+ stages over Flower's Message API.

How a Message-API ClientApp serves a multi-stage protocol (flwr 1.42, ``flwr/clientapp/
client_app.py``): a message type is ``"<category>.<action>"`` with category ``train``,
``evaluate`` or ``query`` and any Python identifier as action, and ``@app.query("secagg_setup")``
registers the handler of ``"query.secagg_setup"``. The ServerApp sends one message per node and
stage with ``grid.send_and_receive(messages, timeout=...)`` and gets back only the replies that
arrived (an error reply or a timeout is a dropout). The ClientApp process may be a fresh one for
every message, so the client's secrets live in ``context.state`` (a RecordDict kept on the
node, never sent) between stages: ``save_client`` / ``load_client`` below.

The masked-input stage is a ``train`` message: it brings the global adapter, the client trains,
and the reply carries the masked vector in place of the adapter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedvlm.contract.secagg_keys import (
    ABORTED_ROUNDS,
    CONSISTENCY_MESSAGE,
    MASKED_INPUT_MESSAGE,
    REVEAL_MESSAGE,
    SECAGG_ABORTS,
    SECAGG_ARRAYS,
    SECAGG_CONFIG,
    SECAGG_STATE,
    SETUP_MESSAGE,
    SHARE_KEYS_MESSAGE,
    STAGE,
    UNMASK_MESSAGE,
)

from .client import SecAggClient
from .errors import CoordinatorMisbehaviourError, MalformedPayloadError
from .messages import Payload, Stage

MESSAGE_TYPES = {
    Stage.SETUP: SETUP_MESSAGE,
    Stage.REVEAL: REVEAL_MESSAGE,
    Stage.SHARE_KEYS: SHARE_KEYS_MESSAGE,
    Stage.MASKED_INPUT: MASKED_INPUT_MESSAGE,
    Stage.CONSISTENCY: CONSISTENCY_MESSAGE,
    Stage.UNMASK: UNMASK_MESSAGE,
}


def stage_of(message_type: str) -> Stage:
    """Return the stage a message type carries, or raise MalformedPayloadError."""
    for stage, name in MESSAGE_TYPES.items():
        if name == message_type:
            return stage
    raise MalformedPayloadError(f"message type {message_type!r} is no secure-aggregation stage")


def payload_to_recorddict(payload: Payload, into: RecordDict | None = None) -> RecordDict:
    """Store a payload in a RecordDict (adding to ``into``, e.g. next to the global adapter)."""
    content = into if into is not None else RecordDict()
    arrays = {k: v for k, v in payload.items() if isinstance(v, np.ndarray)}
    content[SECAGG_CONFIG] = ConfigRecord(
        {k: v for k, v in payload.items() if k not in arrays}, keep_input=True
    )
    if arrays:
        content[SECAGG_ARRAYS] = ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}, keep_input=True
        )
    return content


def recorddict_to_payload(content: RecordDict) -> Payload:
    """Return the payload stored by ``payload_to_recorddict``."""
    if SECAGG_CONFIG not in content:
        raise MalformedPayloadError(f"the message has no '{SECAGG_CONFIG}' ConfigRecord")
    payload: dict[str, Any] = dict(content.config_records[SECAGG_CONFIG])
    if SECAGG_ARRAYS in content:
        for key, array in content.array_records[SECAGG_ARRAYS].items():
            payload[key] = array.numpy()
    return payload


def to_messages(
    requests: dict[int, Payload],
    group_id: str,
    extra: dict[int, RecordDict] | None = None,
) -> list[Message]:
    """Return one Flower message per node for a stage's requests (``SecAggServer.requests()``).

    ``extra`` adds records to a node's message, e.g. the global adapter and train config in
    the masked-input stage.
    """
    out = []
    for node_id, payload in requests.items():
        content = payload_to_recorddict(payload, into=(extra or {}).get(node_id))
        stage = Stage(payload[STAGE])
        message_type = MESSAGE_TYPES[stage]
        out.append(Message(content, node_id, message_type, group_id=group_id))
    return out


def from_replies(replies: Iterable[Message]) -> dict[int, Payload]:
    """Return ``{node id: payload}`` of the replies that carry one; error replies are dropouts."""
    payloads = {}
    for reply in replies:
        if reply.has_error() or SECAGG_CONFIG not in reply.content:
            continue
        payloads[reply.metadata.src_node_id] = recorddict_to_payload(reply.content)
    return payloads


def save_client(state: RecordDict, client: SecAggClient) -> None:
    """Keep a client's round state in the node's ``context.state``."""
    state[SECAGG_STATE] = ConfigRecord(client.to_state())


def load_client(state: RecordDict) -> SecAggClient:
    """Rebuild the client saved by ``save_client`` (a stage came before its setup otherwise)."""
    if SECAGG_STATE not in state:
        raise MalformedPayloadError("no secure-aggregation state on this node: setup never ran")
    return SecAggClient.from_state(dict(state.config_records[SECAGG_STATE]))


def count_aborts(state: RecordDict, limit: int) -> int:
    """Count the rounds in a row that aborted after this site revealed its graph seed.

    Called before each setup: a previous round still waiting for its key-sharing stage
    revealed a seed and never drew the graph (the coordinator withheld a reveal, or aborted
    it otherwise); one that got further resets the count. Each such abort is one more try
    at a graph the coordinator likes, so the site stops after ``limit`` of them.

    Raises
    ------
    CoordinatorMisbehaviourError
        When ``limit`` rounds in a row aborted after the reveal (``secagg-max-aborts``).
    """
    aborts = state.config_records[SECAGG_ABORTS] if SECAGG_ABORTS in state else {}
    aborted = int(aborts.get(ABORTED_ROUNDS, 0))
    if SECAGG_STATE in state:
        previous = load_client(state).next_stage
        aborted = aborted + 1 if previous == Stage.SHARE_KEYS.value else 0
    state[SECAGG_ABORTS] = ConfigRecord({ABORTED_ROUNDS: aborted})
    if aborted >= limit:
        raise CoordinatorMisbehaviourError(
            f"{aborted} secure-aggregation rounds in a row aborted after this site revealed "
            f"its graph seed (secagg-max-aborts = {limit}): refusing a coordinator that may be "
            "re-drawing the graph"
        )
    return aborted
