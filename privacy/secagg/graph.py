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


class Ring:
    """The public ring: the sampled ids in their pseudo-random order, and how far each reaches.

    A client needs only its own corner of the ring: ``segment`` (its neighbours' neighbourhoods)
    is O(degree) ids, found after one hash and sort of the sampled ids (O(n log n), about 30 ms
    at 10,000 ids) instead of building every client's neighbour list (O(n · degree)).
    A degree of at least ``len(client_ids) - 1`` gives the complete graph (each client reaches
    half the ring on either side); otherwise the degree must be even, and each client links to
    the ``degree / 2`` clients on either side of it.
    """

    def __init__(self, client_ids: list[int], degree: int, seed: bytes) -> None:
        m = len(client_ids)
        if degree < m - 1 and degree % 2:
            raise ValueError(f"degree {degree} must be even for a ring graph of {m} clients")
        self.order = sorted(
            client_ids, key=lambda c: hashlib.sha256(seed + c.to_bytes(8, "little")).digest()
        )
        self.half = m // 2 if degree >= m - 1 else degree // 2
        self._position = {c: pos for pos, c in enumerate(self.order)}

    def _around(self, client_id: int, reach: int) -> list[int]:
        pos, m = self._position[client_id], len(self.order)
        return [self.order[(pos + step) % m] for step in range(-reach, reach + 1)]

    def neighbours(self, client_id: int) -> list[int]:
        """Return the client's sorted neighbours."""
        return sorted(set(self._around(client_id, self.half)) - {client_id})

    def segment(self, client_id: int) -> list[int]:
        """Return the ring positions within two hops of the client, in ring order.

        ``4 · half + 1`` ids centred on the client (an id repeats when the ring is shorter):
        enough for ``closed_neighbourhoods`` to give the client's and each neighbour's closed
        neighbourhood, all that the consistency check needs.
        """
        return self._around(client_id, 2 * self.half)


def closed_neighbourhoods(segment: list[int]) -> dict[int, list[int]]:
    """Return the sorted closed neighbourhood of a segment's centre and of each of its neighbours.

    ``segment`` is a ``Ring.segment``; its centre maps to its own closed neighbourhood.
    """
    half = (len(segment) - 1) // 4
    centre = 2 * half
    return {
        segment[centre + d]: sorted(set(segment[centre + d - half : centre + d + half + 1]))
        for d in range(-half, half + 1)
    }


def neighbours(client_ids: list[int], degree: int, seed: bytes) -> dict[int, list[int]]:
    """Return each client's sorted neighbours in the ``degree``-regular graph (see ``Ring``)."""
    ring = Ring(client_ids, degree, seed)
    return {c: ring.neighbours(c) for c in ring.order}
