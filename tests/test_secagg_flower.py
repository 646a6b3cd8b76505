"""SecAgg+ stages travel as real Flower Messages to a Message-API ClientApp.

The ClientApp below is the pattern the client package wires in: one handler per stage
(``@app.query("secagg_setup")`` ...), the round state in ``context.state``, the masked-input
stage as a ``train`` message.
"""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from privacy.secagg import (
    CoordinatorMisbehaviourError,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    Stage,
)
from privacy.secagg.flower import (
    count_aborts,
    from_replies,
    load_client,
    payload_to_recorddict,
    recorddict_to_payload,
    save_client,
    to_messages,
)
from privacy.secagg.identity import ephemeral_federation
from simulations.in_process import InProcessGrid, serverapp_identity

IDS = [11, 22, 33, 44, 55]
SITES = ephemeral_federation(IDS)
app = ClientApp()


def _update(context: Context) -> np.ndarray:
    seed = int(context.node_config["seed"])
    return np.random.default_rng(seed).uniform(-1, 1, 32).astype(np.float32)


@app.query("secagg_setup")
def _setup(message: Message, context: Context) -> Message:
    payload = recorddict_to_payload(message.content)
    client, reply = SecAggClient.setup(payload, SITES[context.node_id])
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


app.query("secagg_reveal")(_stage)
app.query("secagg_share_keys")(_stage)
app.train("secagg_masked_input")(_stage)
app.query("secagg_consistency")(_stage)
app.query("secagg_unmask")(_stage)


class CrashingInTraining(InProcessGrid):
    """Node 33 crashes while training: it never answers the masked-input (train) stage.

    Every other message runs the ClientApp above with the node's ``context.state`` through
    protobuf first, as in a fresh ClientApp process per message.
    """

    def deliver(self, message: Message) -> Message | None:
        if message.metadata.dst_node_id == 33 and message.metadata.message_type.startswith("train"):
            return None
        return super().deliver(message)


def test_a_round_through_flower_messages_and_context_state():
    ids = IDS
    grid = CrashingInTraining(app, {}, [{"seed": i} for i in range(len(ids))], ids)
    # One of 5 stated to drop (dropout fraction 0.2): degree 4, threshold 3 survive it.
    config = SecAggConfig(num_clients=len(ids), clip=1.0, max_weight=10, dropout_fraction=0.2)
    server = SecAggServer(config, ids, 32)
    with serverapp_identity():
        while not server.done:
            requests = server.requests()
            extra = None
            if server.stage == Stage.MASKED_INPUT:  # the train message also carries train config
                extra = {n: RecordDict({"config": ConfigRecord({"weight": 3})}) for n in requests}
            server.receive(from_replies(grid.send_and_receive(to_messages(requests, "1", extra))))
    result = server.result()
    assert result.survivors == [11, 22, 44, 55]
    assert result.total_weight == 12
    expected = sum(3 * _update(grid.contexts[n]).astype(np.float64) for n in result.survivors)
    assert np.abs(result.weighted_sum - expected).max() <= config.step * 12


def test_a_site_stops_after_max_aborts_rounds_aborted_after_its_reveal():
    """Grinding by aborting: each round the coordinator aborts after the reveal is one more
    try at a graph it likes; the site counts them in its node state and refuses at the limit.
    (Mutation: the count never incremented -> this test fails.)"""
    state = RecordDict()
    assert count_aborts(state, limit=2) == 0  # first round: nothing before
    revealed = SecAggServer(SecAggConfig(num_clients=5, clip=1.0), IDS, 4)
    for aborts in (1, 2):
        client = SecAggClient.setup(revealed.requests()[IDS[0]], SITES[IDS[0]])[0]
        client.next_stage = Stage.SHARE_KEYS.value  # it revealed; key sharing never came
        save_client(state, client)
        if aborts == 1:
            assert count_aborts(state, limit=2) == 1
    with pytest.raises(CoordinatorMisbehaviourError, match="2 secure-aggregation rounds in a row"):
        count_aborts(state, limit=2)
    client.next_stage = Stage.UNMASK.value  # a round that drew its graph resets the count
    save_client(state, client)
    assert count_aborts(state, limit=2) == 0
