"""A whole federation in one Python process: the real apps, Flower's wire format, no engine.

Flower's simulation engine starts Ray, a SuperLink and SuperNode processes: ~20 s before the
first round, which dominates a benchmark table of many short runs and makes tests slow. What
the project's code sees of all that is small: the coordinator's ``@app.main`` receives a
``Grid`` (``get_node_ids``, ``send_and_receive``) and a ``Context``; each site's ClientApp
receives a ``Message`` and its node's ``Context``. `InProcessGrid` provides exactly that, in
this process, keeping what makes a deployment differ from a function call:

- every message and every reply goes through Flower's protobuf encoding (so only what the
  wire can carry arrives, and arrives as a fresh object);
- each node keeps its ``context.state`` between messages, and that state also goes through
  protobuf before each message, as it does when a SuperNode starts a fresh ClientApp
  process (the secure-aggregation round state lives there; a site's DP account lives in a
  node-local file that outlives the run, `privacy.account_store`);
- a ClientApp that raises becomes an error reply, as Flower's ClientApp runtime makes it;
- each site has credentials of its own (a fresh CA, `<site>.key` / `<site>.crt`, made in a
  temporary folder), which secure aggregation signs its round keys with.

`run_coordinator` runs the coordinator's real ServerApp main against such a grid, with the
process identity Flower's ServerApp runtime sets first (`serverapp_identity`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import (
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.supercore.task_identity import TaskIdentity

from coordinator import app as coordinator_app
from fedvlm.credentials import make_credentials
from privacy.secagg.identity import IDENTITY_KEY

FIRST_NODE_ID = 1000


def over_the_wire(message: Message) -> Message:
    """``message`` as the receiving side gets it: through Flower's protobuf encoding."""
    return message_from_proto(message_to_proto(message))


@contextmanager
def serverapp_identity(run_id: int = 1) -> Iterator[None]:
    """Set the process identity Flower's ServerApp runtime sets before ``@app.main`` runs.

    Building a ``Message`` reads it (the source node and run), so code that sends messages
    outside Flower's runtime needs it; the previous identity is restored on exit, so a test
    leaves the process as it found it.
    """
    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity._task_id, TaskIdentity._run_id = 1, run_id
    TaskIdentity._node_id = SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class InProcessGrid:
    """Flower's ``Grid`` as the coordinator uses it, delivering to a ClientApp in this process.

    Parameters
    ----------
    app
        The ClientApp every node runs (the project's ``client.app.app``, or a test's own).
    run_config
        The run config each node's ``Context`` gets (copied per node).
    node_configs
        One mapping per node: extra node-config keys on top of the ``partition-id`` (its
        position here) and ``num-partitions`` every simulated site has, e.g. a per-site
        ``lora-rank``. Pass ``[{}] * n`` for ``n`` plain sites.
    node_ids
        The nodes' ids, one per node config (default: 1000, 1001, ...). A resumed federation
        is a new one with new ids and empty node states over the same partitions.

    Notes
    -----
    Tests inject faults by subclassing: override `send_and_receive` to raise (the coordinator
    process dies at a given round) or `deliver` to return None (a node that never answers).
    ``sent`` lists the message type of everything the coordinator sent, answered or not.
    """

    def __init__(
        self,
        app: ClientApp,
        run_config: Mapping[str, Any],
        node_configs: Sequence[Mapping[str, Any]],
        node_ids: Sequence[int] | None = None,
    ) -> None:
        if node_ids is None:
            node_ids = range(FIRST_NODE_ID, FIRST_NODE_ID + len(node_configs))
        if len(node_ids) != len(node_configs):
            raise ValueError(f"{len(node_ids)} node ids for {len(node_configs)} node configs")
        self.app = app
        self._credentials = tempfile.TemporaryDirectory(prefix="fedvlm-credentials-")
        sites = [f"site-{i}" for i in range(len(node_configs))]
        keys = make_credentials(self._credentials.name, sites=sites).site_keys
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={
                    "partition-id": i,
                    "num-partitions": len(node_configs),
                    IDENTITY_KEY.key: str(Path(keys[f"site-{i}"][0])),
                    **extra,
                },
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, (node, extra) in enumerate(zip(node_ids, node_configs, strict=True))
        }
        self.sent: list[str] = []

    def get_node_ids(self) -> list[int]:
        """All nodes are connected, always (dropouts are the subclasses' business)."""
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> list[Message]:
        """Deliver each message in turn and return the replies that came (``timeout`` unused)."""
        replies = []
        for message in messages:
            self.sent.append(message.metadata.message_type)
            reply = self.deliver(message)
            if reply is not None:
                replies.append(reply)
        return replies

    def deliver(self, message: Message) -> Message | None:
        """Run the destination node's ClientApp on ``message``; its reply, over the wire."""
        context = self.contexts[message.metadata.dst_node_id]
        context.state = recorddict_from_proto(recorddict_to_proto(context.state))
        try:
            reply = self.app(over_the_wire(message), context)
        except Exception as err:  # Flower's ClientApp runtime turns this into an error reply
            reply = Message(Error(code=0, reason=str(err)), reply_to=message)
        return over_the_wire(reply)


def run_coordinator(grid: InProcessGrid, run_config: Mapping[str, Any], run_id: int = 1) -> None:
    """Run the coordinator's real ServerApp main over ``grid``, as Flower's runtime would.

    A new ``run_id`` is a new federation process (a resumed run), with a fresh coordinator
    ``Context``; the run folder and its ledger are what carries over.
    """
    context = Context(
        run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config)
    )
    with serverapp_identity(run_id):
        coordinator_app.main(grid, context)
