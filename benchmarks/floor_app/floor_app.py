"""A ServerApp and ClientApp that exchange what fedvlm's rounds exchange, and nothing else.

Each round sends every node a ``train`` message and then an ``evaluate`` message, each
carrying an adapter-shaped payload (``payload``: the float32 sizes of its arrays, comma
separated; Flower moves every array as an object of its own, so their number matters as
much as their bytes), and ``train``'s reply carries one back up. Flower's objects are
content-addressed (equal arrays are one object) and an object the SuperLink holds is not
sent again, so every array's values differ, in every message and every reply (as a new
global adapter's and each site's update's do). All through
the coordinator's own reply exchange (`coordinator.exchange`), and appends the round's wall
seconds to the JSON-lines file ``out``. The ClientApp only replies: what a round takes here
is Flower's messaging (SuperNode and SuperExec polling, a process per message), the floor
under fedvlm's deployed rounds. Imports no torch, like `client.node_app`.
"""

from __future__ import annotations

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from coordinator.exchange import prompt_replies
from coordinator.liveness import wait_for_nodes

server = ServerApp()
client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    """Send the payload back, changed as a site's update is (new objects to upload)."""
    mark = float(context.node_id % 1_000_003)
    arrays = {k: Array(a.numpy() + mark) for k, a in msg.content["arrays"].items()}
    return Message(RecordDict({"arrays": ArrayRecord(arrays)}), reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Reply with nothing, as a site replies with its scalars."""
    return Message(RecordDict(), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    """Rounds of train then evaluate to every node; each round's seconds to ``out``."""
    config = context.run_config
    grid = prompt_replies(grid)
    nodes = wait_for_nodes(grid, int(config["min-available-nodes"]), 600.0)
    sizes = [int(n) for n in str(config["payload"]).split(",") if n]
    timeout = float(config["round-timeout"])
    for server_round in range(1, int(config["num-server-rounds"]) + 1):
        started = time.perf_counter()
        for step, kind in enumerate((MessageType.TRAIN, MessageType.EVALUATE)):
            value = 2 * server_round + step  # a new global adapter for each message, as in fedvlm
            payload = ArrayRecord(
                {
                    f"a{i}": Array(np.full(n, value + i / 64, np.float32))
                    for i, n in enumerate(sizes)
                }
            )
            sent = [Message(RecordDict({"arrays": payload}), node, kind) for node in nodes]
            replies = grid.send_and_receive(sent, timeout=timeout)
            if len(replies) != len(sent) or any(r.has_error() for r in replies):
                raise RuntimeError(f"round {server_round}: {kind}: not every node answered")
        seconds = time.perf_counter() - started
        with open(str(config["out"]), "a") as sink:
            sink.write(json.dumps({"round": server_round, "seconds": seconds}) + "\n")
