"""SecAgg+ stages travel as real Flower Messages to a Message-API ClientApp.

The ClientApp below is the pattern the client package wires in: one handler per stage
(``@app.query("secagg_setup")`` ...), the round state in ``context.state``, the masked-input
stage as a ``train`` message.
"""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import (
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.supercore.task_identity import TaskIdentity

from privacy.secagg import SecAggClient, SecAggConfig, SecAggServer, Stage
from privacy.secagg.flower import (
    from_replies,
    load_client,
    payload_to_recorddict,
    recorddict_to_payload,
    save_client,
    to_messages,
)

app = ClientApp()


def _update(context: Context) -> np.ndarray:
    seed = int(context.node_config["seed"])
    return np.random.default_rng(seed).uniform(-1, 1, 32).astype(np.float32)


@app.query("secagg_setup")
def _setup(message: Message, context: Context) -> Message:
    client, reply = SecAggClient.setup(recorddict_to_payload(message.content))
    save_client(context.state, client)
    return Message(payload_to_recorddict(reply), reply_to=message)


def _stage(message: Message, context: Context) -> Message:
    client = load_client(context.state)
    payload = recorddict_to_payload(message.content)
    train_config = message.content.config_records.get("config", {})
    weight = int(train_config.get("weight", 1))
    reply = client.handle(payload, _update(context), weight)
    save_client(context.state, client)
    return Message(payload_to_recorddict(reply), reply_to=message)


app.query("secagg_share_keys")(_stage)
app.train("secagg_masked_input")(_stage)
app.query("secagg_consistency")(_stage)
app.query("secagg_unmask")(_stage)


def _wire(message: Message) -> Message:
    return message_from_proto(message_to_proto(message))


@pytest.fixture
def serverapp_identity(monkeypatch):
    """Set the process identity Flower's ServerApp runtime sets before ``@app.main`` runs."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)


def test_a_round_through_flower_messages_and_context_state(serverapp_identity):
    ids = [11, 22, 33, 44, 55]
    contexts = {
        node: Context(
            run_id=1, node_id=node, node_config={"seed": i}, state=RecordDict(), run_config={}
        )
        for i, node in enumerate(ids)
    }
    config = SecAggConfig(num_clients=len(ids), clip=1.0, max_weight=10)
    server = SecAggServer(config, ids, 32)
    while not server.done:
        requests = server.requests()
        extra = None
        if server.stage == Stage.MASKED_INPUT:  # the train message also carries train config
            extra = {n: RecordDict({"config": ConfigRecord({"weight": 3})}) for n in requests}
        replies = []
        for message in to_messages(requests, group_id="1", extra=extra):
            node = message.metadata.dst_node_id
            if node == 33 and server.stage == Stage.MASKED_INPUT:
                continue  # this node crashed during training
            context = contexts[node]
            # A fresh ClientApp process per message: the state goes through protobuf too.
            context.state = recorddict_from_proto(recorddict_to_proto(context.state))
            replies.append(_wire(app(_wire(message), context)))
        server.receive(from_replies(replies))
    result = server.result()
    assert result.survivors == [11, 22, 44, 55]
    assert result.total_weight == 12
    expected = sum(3 * _update(contexts[n]).astype(np.float64) for n in result.survivors)
    assert np.abs(result.weighted_sum - expected).max() <= config.step * 12
