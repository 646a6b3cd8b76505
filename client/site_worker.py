"""A node's long-lived site worker: the real ClientApp, kept warm across messages.

Flower's SuperNode starts a fresh ``flwr-clientapp`` process per message; run there, each
message would re-import torch, reload the base model and re-decode the site's images.
`fedvlm node` therefore starts this process beside ``flower-supernode`` (same node config,
threads and device) and the per-message ClientApp (`client.node_app`) forwards each message
here. The handlers are those of `client.app`, unchanged: their per-process caches
(``load_peft_model``, ``load_site``) now live as long as the node.

The worker holds nothing that must survive it: the node's state (DP accountant, SecAgg
secrets) arrives with each message and goes back with the reply, and Flower keeps it.

Run as ``python -m client.site_worker --socket PATH``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import traceback
from pathlib import Path

from client.worker_channel import (
    FAILED,
    ChannelBrokenError,
    decode_request,
    encode_reply,
    listen,
    recv_frame,
    send_frames,
)

log = logging.getLogger(__name__)


def serve(server: socket.socket) -> None:
    """Answer requests one at a time until the process is stopped.

    One at a time, as a SuperNode runs one ClientApp per message and a site's CPU or GPU
    serves one training at a time anyway.
    """
    from client.app import app  # torch, transformers: imported once, here

    while True:
        conn, _ = server.accept()
        with conn:
            try:
                handle(app, conn)
            except ChannelBrokenError:  # the ClientApp process went away: nothing to answer
                log.warning("site worker: the ClientApp closed the channel before the reply")


def handle(app, conn: socket.socket) -> None:
    """Run one forwarded message through the real ClientApp and send back what it left.

    A handler's exception travels back as its type and text (the ClientApp raises it, and
    Flower turns it into an error reply as on the cold path); the node state is then not
    sent back, so a failed message changes nothing that Flower keeps.
    """
    message, context = decode_request(recv_frame(conn), recv_frame(conn))
    try:
        reply = app(message, context)
    except Exception as err:  # noqa: BLE001 - every failure becomes the sender's error reply
        # The traceback stays in the node's log; only what the cold path's error reply
        # would say (the exception's type and text) goes back to become the reply.
        log.error(
            "site worker: %s failed:\n%s", message.metadata.message_type, traceback.format_exc()
        )
        send_frames(conn, FAILED, f"{type(err).__name__}: {err}".encode())
        return
    send_frames(conn, *encode_reply(reply, context.state))


def main(argv: list[str] | None = None) -> None:
    """Listen on ``--socket`` (mode 0600) and serve until stopped."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server = listen(args.socket)
    log.info("site worker %s listening on %s", os.getpid(), args.socket)
    serve(server)


if __name__ == "__main__":
    main()
