"""The local channel between a node's per-message ClientApp and its long-lived site worker.

A Unix socket that only the node's user can open: it is created inside a fresh 0700 folder
with a 0600 mode (umask set before ``bind``, so there is no moment where another user could
connect). Over it travel length-prefixed frames (8-byte big-endian length, then the bytes):
Flower's own protobuf forms of the ``Message`` and ``Context``, so that the worker runs the
handler on exactly what Flower delivered, and the reply and ``context.state`` come back the
same way. Hand-written framing because the standard library has none for stream sockets
and Flower's gRPC stack is not meant to be a local IPC API.

This module imports nothing of torch: the forwarding ClientApp process must stay light.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

# Node-config keys (a site's own settings, never on the Flower wire).
WORKER_ENABLED = "site-worker"  # false: today's cold path, a fresh process per message
WORKER_SOCKET = "site-worker-socket"  # set by `fedvlm node` when it runs a worker

_LENGTH = struct.Struct(">Q")
REPLY = b"reply"
FAILED = b"failed"


class ChannelBrokenError(ConnectionError):
    """The worker went away (or was never there) before a whole reply arrived."""


def socket_folder() -> Path:
    """A fresh folder only this user can enter, to hold one node's worker socket."""
    return Path(tempfile.mkdtemp(prefix="fedvlm-node-"))  # mkdtemp makes it 0700


def listen(path: Path) -> socket.socket:
    """Bind a listening Unix socket at ``path`` with mode 0600 (a stale file is replaced)."""
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)  # the socket file is born 0600
    try:
        server.bind(str(path))
    finally:
        os.umask(previous)
    server.listen(8)
    return server


def send_frames(conn: socket.socket, *frames: bytes) -> None:
    """Write each frame as its length then its bytes; a peer gone raises ChannelBrokenError."""
    try:
        conn.sendall(b"".join(_LENGTH.pack(len(f)) + f for f in frames))
    except OSError as err:  # BrokenPipeError, ConnectionResetError: the peer died
        raise ChannelBrokenError(f"the site worker channel broke while sending: {err}") from err


def recv_frame(conn: socket.socket) -> bytes:
    """Read one frame; raise ChannelBrokenError if the peer closed before it was whole."""
    (length,) = _LENGTH.unpack(_recv_exactly(conn, _LENGTH.size))
    return _recv_exactly(conn, length)


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    view = bytearray(n)
    got = 0
    while got < n:
        try:
            chunk = conn.recv_into(memoryview(view)[got:], n - got)
        except OSError as err:  # a peer that died with our request unread resets the socket
            raise ChannelBrokenError(f"the site worker channel broke: {err}") from err
        if chunk == 0:
            raise ChannelBrokenError("the site worker closed the channel mid-frame")
        got += chunk
    return bytes(view)


def encode_request(message: Message, context: Context) -> tuple[bytes, bytes]:
    """The two frames of a request: the Message and the Context (state included)."""
    return (
        message_to_proto(message).SerializeToString(),
        context_to_proto(context).SerializeToString(),
    )


def decode_request(message: bytes, context: bytes) -> tuple[Message, Context]:
    """Inverse of `encode_request`."""
    return (
        message_from_proto(ProtoMessage.FromString(message)),
        context_from_proto(ProtoContext.FromString(context)),
    )


def encode_reply(reply: Message, state: RecordDict) -> tuple[bytes, bytes, bytes]:
    """A handled message: the reply and the node state the handler left."""
    return (
        REPLY,
        message_to_proto(reply).SerializeToString(),
        recorddict_to_proto(state).SerializeToString(),
    )


def decode_reply(message: bytes, state: bytes) -> tuple[Message, RecordDict]:
    """Inverse of `encode_reply` (after its kind frame)."""
    return (
        message_from_proto(ProtoMessage.FromString(message)),
        recorddict_from_proto(ProtoRecordDict.FromString(state)),
    )
