"""The k-regular communication graph of SecAgg+.

Each client shares secrets with, and masks against, only its neighbours. The graph is a ring-shaped
Harary graph over a pseudo-random order of the clients that completed setup: the order comes from
hashing a public seed with each client id, so every client recomputes its own neighbourhood and
can tell when the coordinator hands it the wrong peers. The graph is drawn over every *sampled*
client and the seed hashes only the round id and the sorted sampled ids, which the coordinator
sends with the setup request: it is fixed before any reply comes back, so the coordinator cannot
re-draw it by discarding replies (grinding); clients that drop out are missing vertices.
What this does not stop: a coordinator that picks the round id itself can still try many round
ids offline before sending setup.
"""

from __future__ import annotations

import hashlib


def graph_seed(round_id: bytes, sampled: list[int]) -> bytes:
    """Return the public seed of the graph: a hash of the round and the sorted sampled ids."""
    digest = hashlib.sha256(b"secagg-graph" + round_id)
    for client_id in sorted(sampled):
        digest.update(client_id.to_bytes(8, "little"))
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
