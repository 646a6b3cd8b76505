"""Stages, payload keys and the exact bytes that get signed or authenticated.

A payload is a flat dict whose values are ``int``, ``bytes``, ``str``, lists of ints or of
bytes, or one numpy array (the masked vector): exactly what a Flower ConfigRecord plus an
ArrayRecord carry. Readers go through ``get`` so that a malformed payload fails with a message
naming the stage, the key and the client.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import numpy as np

# Payload keys: defined with every other wire name in the message contract; re-exported
# here because both sides of the protocol read them as ``messages.STAGE`` etc.
from fedvlm.contract.secagg_keys import (  # noqa: F401  (re-exported)
    ALIVE,
    B_COMMIT,
    B_SHARES,
    C_PK,
    CIPHERTEXTS,
    CLIENT_ID,
    COMMITTED,
    COMMITTED_FPS,
    COMMITTED_SEEDS,
    DEAD,
    DST_IDS,
    ID_CERT,
    ID_SIG,
    LENGTH,
    MASKED,
    PARTICIPANTS,
    PEER_B_COMMIT,
    PEER_C_PK,
    PEER_CERT,
    PEER_ID_SIG,
    PEER_IDS,
    PEER_S_PK,
    PEER_SIG,
    PEER_SIG_PK,
    REVEALS,
    ROUND,
    S_PK,
    SAMPLED,
    SEED,
    SEED_COMMIT,
    SIG,
    SIG_PK,
    SIGNATURES,
    SIGNER_CERTS,
    SIGNER_ID_SIGS,
    SIGNER_IDS,
    SIGNER_SIG_PKS,
    SK_SHARES,
    SRC_IDS,
    STAGE,
    SURVIVORS,
)

from .errors import MalformedPayloadError

Payload = dict[str, Any]


class Stage(StrEnum):
    """Protocol stages in order (Bonawitz et al. 2017 rounds 0-4, SecAgg+ graph).

    ``REVEAL`` is fedvlm's: the commit-then-reveal of the graph seed (``graph``).
    """

    SETUP = "setup"  # coordinator -> config; client -> signed public keys, graph-seed commit
    REVEAL = "reveal"  # coordinator -> the committed set; client -> its graph seed
    SHARE_KEYS = "share_keys"  # coordinator -> neighbours' keys; client -> encrypted shares
    MASKED_INPUT = "masked_input"  # coordinator -> shares for me; client -> masked vector
    CONSISTENCY = "consistency"  # coordinator -> survivor set; client -> signature of it
    UNMASK = "unmask"  # coordinator -> signed survivors + requests; client -> shares


STAGES = list(Stage)

_DOMAIN = b"fedvlm-secagg-v1/"


def id_bytes(*ids: int) -> bytes:
    """Return client ids as fixed 8-byte little-endian words (Flower node ids are uint64)."""
    return b"".join(i.to_bytes(8, "little") for i in ids)


def bundle_message(
    round_id: bytes, client_id: int, c_pk: bytes, s_pk: bytes, commit: bytes
) -> bytes:
    """Return the bytes a client signs to vouch for its public keys in this round."""
    return _DOMAIN + b"keys/" + round_id + id_bytes(client_id) + c_pk + s_pk + commit


def identity_message(round_id: bytes, client_id: int, sig_pk: bytes) -> bytes:
    """Return the bytes a site signs with its long-term key to vouch for its round key."""
    return _DOMAIN + b"identity/" + round_id + id_bytes(client_id) + sig_pk


def survivors_message(
    round_id: bytes, directory: bytes, signer: int, neighbourhood: list[int], survivors: list[int]
) -> bytes:
    """Return the bytes ``signer`` signs in the consistency check: who in its closed
    neighbourhood survived, under the committed set it saw.

    ``directory`` is the digest of the committed set (``graph.committed_digest``): a
    signature vouches that its signer saw the same sites, identities and graph seed too.
    The whole neighbourhood is in the message, not only its survivors, so a client that was
    shown another graph (or another signer's neighbourhood) cannot match the signature.
    """
    alive = sorted(set(survivors) & set(neighbourhood))
    return (
        _DOMAIN
        + b"neighbourhood-survivors/"
        + round_id
        + directory
        + id_bytes(signer, len(neighbourhood), *sorted(neighbourhood))
        + id_bytes(*alive)
    )


def share_aad(round_id: bytes, src: int, dst: int) -> bytes:
    """Return the associated data authenticated with the shares ``src`` sends ``dst``."""
    return _DOMAIN + b"shares/" + round_id + id_bytes(src, dst)


def info(purpose: bytes, round_id: bytes, *ids: int) -> bytes:
    """Return the HKDF ``info`` that binds a derived key to its purpose, round and clients."""
    return _DOMAIN + purpose + b"/" + round_id + id_bytes(*ids)


def get(payload: Payload, key: str, kind: type, who: str) -> Any:
    """Return ``payload[key]`` checked to be ``kind`` (or a list of ``kind``).

    Parameters
    ----------
    payload : dict
        The payload under inspection.
    key : str
        Key that must be present.
    kind : type
        ``int``, ``bytes`` or ``np.ndarray``; ``list[int]`` / ``list[bytes]`` for lists.
    who : str
        Names the sender and stage in the error, e.g. ``"client 7 (share_keys)"``.
    """
    if key not in payload:
        raise MalformedPayloadError(f"{who}: payload misses key '{key}'")
    value = payload[key]
    item_kind = getattr(kind, "__args__", None)
    if item_kind:
        ok = isinstance(value, list) and all(
            isinstance(v, item_kind[0]) and not isinstance(v, bool) for v in value
        )
    else:
        ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise MalformedPayloadError(f"{who}: key '{key}' is not of type {kind}")
    return value


def check_stage(payload: Payload, expected: Stage, round_id: bytes | None, who: str) -> None:
    """Raise unless the payload belongs to ``expected`` stage (and round, when known)."""
    stage = payload.get(STAGE)
    if stage != expected.value:
        raise MalformedPayloadError(f"{who}: expected stage '{expected}', got {stage!r}")
    if round_id is not None and get(payload, ROUND, bytes, who) != round_id:
        raise MalformedPayloadError(f"{who}: payload belongs to another round")


def payload_nbytes(payload: Payload) -> int:
    """Return the bytes a payload's values occupy on the wire (ints as 8 bytes, no framing)."""
    total = 0
    for value in payload.values():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, np.ndarray):
                total += item.nbytes
            elif isinstance(item, bytes | str):
                total += len(item)
            else:
                total += 8
    return total
