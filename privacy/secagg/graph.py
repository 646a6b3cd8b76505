"""The k-regular communication graph of SecAgg+.

Each client shares secrets with, and masks against, only its neighbours. The graph is a ring-shaped
Harary graph over a pseudo-random order of the clients that completed setup: the order comes from
hashing a public seed with each client id, so every client recomputes its own neighbourhood and
can tell when the coordinator hands it the wrong peers. The seed mixes the round id with the
fresh signing keys of all participants, so the coordinator cannot pick the round id to place
chosen clients around a victim.
"""

from __future__ import annotations

import hashlib


def graph_seed(round_id: bytes, participants: list[int], sig_pks: list[bytes]) -> bytes:
    """Return the public seed of the graph: a hash of the round and every participant's key."""
    digest = hashlib.sha256(round_id)
    for client_id, sig_pk in sorted(zip(participants, sig_pks, strict=True)):
        digest.update(client_id.to_bytes(8, "little") + sig_pk)
    return digest.digest()


def neighbours(client_ids: list[int], degree: int, seed: bytes) -> dict[int, list[int]]:
    """Return each client's sorted neighbours in a ``degree``-regular graph.

    A degree of at least ``len(client_ids) - 1`` gives the complete graph; otherwise the degree
    must be even, and each client links to the ``degree / 2`` clients on either side of it in
    the ring.
    """
    m = len(client_ids)
    if degree >= m - 1:
        return {c: sorted(set(client_ids) - {c}) for c in client_ids}
    if degree % 2:
        raise ValueError(f"degree {degree} must be even for a ring graph of {m} clients")
    order = sorted(
        client_ids, key=lambda c: hashlib.sha256(seed + c.to_bytes(8, "little")).digest()
    )
    half = degree // 2
    return {
        c: sorted(order[(pos + step) % m] for step in range(-half, half + 1) if step)
        for pos, c in enumerate(order)
    }
