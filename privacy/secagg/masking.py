"""Keys of the masks, shared by clients (who add them) and the coordinator (who removes them).

Each key is HKDF-derived and bound to its purpose, the round and the clients involved, then
expanded by ChaCha20 (``crypto.expand_mask``); the same function on both sides is what makes the
masks cancel.
"""

from . import crypto, messages


def commit_self_mask(b_seed: bytes, round_id: bytes, client_id: int) -> bytes:
    """Return the public commitment to a self-mask seed (lets the server check its rebuild)."""
    return crypto.hkdf(b_seed, messages.info(b"self-mask-commit", round_id, client_id))


def self_mask_key(b_seed: bytes, round_id: bytes, client_id: int) -> bytes:
    """Return the keystream key of a client's self mask."""
    return crypto.hkdf(b_seed, messages.info(b"self-mask", round_id, client_id))


def pair_mask_key(s_sk: bytes, peer_s_pk: bytes, round_id: bytes, a: int, b: int) -> bytes:
    """Return the keystream key of the pairwise mask of clients ``a`` and ``b`` (symmetric)."""
    lo, hi = sorted((a, b))
    return crypto.derive_key(s_sk, peer_s_pk, messages.info(b"pair-mask", round_id, lo, hi))
