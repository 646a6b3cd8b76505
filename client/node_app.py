"""The ClientApp Flower starts per message: forward to the node's warm site worker.

Flower's SuperNode runs a fresh ``flwr-clientapp`` process for every message, so whatever
this module imports is paid per message. It therefore imports no torch and no transformers:
with a site worker (`fedvlm node` sets ``site-worker-socket`` in the node config) it sends
the message and the node's context over the worker's 0600 Unix socket, writes the state the
worker returns back into ``context.state`` (Flower keeps it, so the DP accountant and SecAgg
secrets survive a worker crash) and returns the worker's reply. Without one (``fedvlm node
--cold``, ``site-worker = false``, or a simulation) it runs the full ClientApp
(`client.app`) in this process, as before.

A worker that dies mid-message is restarted by the node; the message is retried once on the
restarted worker. Since the first attempt's reply and state were never returned, the retry
starts from the same node state; the one thing the worker writes outside it, the sample-level
DP account file, is keyed by the message id, so the retry replaces the lost attempt's steps
instead of adding to them (`privacy.account_store`): nothing is counted twice. If the retry
fails too, the message raises and Flower answers with an error reply (the coordinator records
the site as dropped for that round), never a wrong result.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.worker_channel import (
    FAILED,
    WORKER_SOCKET,
    ChannelBrokenError,
    decode_reply,
    encode_request,
    recv_frame,
    send_frames,
)
from fedvlm.contract.secagg_keys import (
    CONSISTENCY_MESSAGE,
    MASKED_INPUT_MESSAGE,
    REVEAL_MESSAGE,
    SETUP_MESSAGE,
    SHARE_KEYS_MESSAGE,
    UNMASK_MESSAGE,
)

log = logging.getLogger(__name__)

# Every message type the full ClientApp (client/app.py) handles; a test checks they match.
FORWARDED = (
    "train",
    "evaluate",
    SETUP_MESSAGE,
    REVEAL_MESSAGE,
    SHARE_KEYS_MESSAGE,
    MASKED_INPUT_MESSAGE,
    CONSISTENCY_MESSAGE,
    UNMASK_MESSAGE,
)
RESTART_WAIT = 120.0  # seconds to wait for a starting or restarted worker to listen

app = ClientApp()


class WorkerFailedError(RuntimeError):
    """The site worker ran the handler and it raised (its type and text, as on the cold path)."""


def forward(message: Message, context: Context) -> Message:
    """Handle one message: on the node's site worker if it has one, else in this process."""
    path = context.node_config.get(WORKER_SOCKET)
    if not path:
        from client.app import app as full_app  # the cold path: torch is imported here

        return full_app(message, context)
    try:
        return _ask(Path(str(path)), message, context)
    except ChannelBrokenError as first:
        log.warning("site worker lost (%s); retrying once on the restarted worker", first)
        return _ask(Path(str(path)), message, context)


def _ask(path: Path, message: Message, context: Context) -> Message:
    """One round trip to the worker; on success write its node state into ``context``.

    Waiting for a worker to listen (one starting with the node, or restarted) is no attempt:
    only a channel that breaks after the request was sent uses up the one retry.
    """
    with _connect(path, RESTART_WAIT) as conn:
        send_frames(conn, *encode_request(message, context))
        kind = recv_frame(conn)
        if kind == FAILED:
            raise WorkerFailedError(recv_frame(conn).decode())
        reply, state = decode_reply(recv_frame(conn), recv_frame(conn))
    context.state.clear()
    context.state.update(state)
    return reply


def _connect(path: Path, wait: float) -> socket.socket:
    """Connect to the worker, waiting up to ``wait`` s for a (re)started one to listen."""
    deadline = time.monotonic() + wait
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(path))
            return conn
        except OSError as err:
            conn.close()
            if time.monotonic() >= deadline:
                raise ChannelBrokenError(f"no site worker at {path}: {err}") from err
            time.sleep(0.05)


for _type in FORWARDED:
    _category, _, _action = _type.partition(".")
    getattr(app, _category)(_action or "default")(forward)
