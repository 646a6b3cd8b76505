"""The k-regular communication graph of SecAgg+, drawn from a seed the coordinator cannot steer.

Each client shares secrets with, and masks against, only its neighbours. The graph is a ring-shaped
Harary graph over a pseudo-random order of the clients: the order comes from hashing a public
seed with each client id, so every client recomputes its own neighbourhood and can tell when
the coordinator hands it the wrong peers.

The ring's vertices are the *sampled* clients (sent at setup, before any reply), as in Bell et
al., not the ones that answered: a sampled client that never commits is a missing vertex. Drawn
over the committed set instead, the graph would shrink to whoever the coordinator admits: at
1,000 sites with 50 colluding, silencing every honest site but a victim left it a complete
graph of colluders, and its update came out of the sum (tests/test_secagg_exclusion.py). Over
the sampled ring a client's neighbours are a uniform k-subset of the n - 1 others whoever is
silenced, which is what the bounds assume, and a client with fewer than t committed neighbours
sends no share at all.

Whoever can predict the seed before fixing the round can grind it: try round ids or sets of
replies offline until colluders land next to a victim. So the seed is drawn by the sites,
commit-then-reveal:

1. setup: each site draws a fresh 32-byte seed and sends only ``seed_commitment`` of it;
2. reveal: the coordinator sends every site the *committed set*: node ids, certified identity
   fingerprints and commitments of the sites it keeps. A site checks it is in it, that no id
   or identity repeats, that every id was sampled, keeps its digest with the sampled ids
   (``committed_digest``), and only then reveals;
3. share keys: the coordinator sends all reveals. Each site checks every reveal against its
   commitment and computes ``graph_seed(digest, reveals)``.

The committed set is fixed before the coordinator learns any reveal, and a commitment hides
its seed, so no choice the coordinator can make moves the graph to a place it can predict:
the seed is uniform as long as one honest site's reveal is in it, which every site's own is.
A committed site that does not reveal aborts the round (the coordinator could otherwise drop
reveals until it liked the graph): the abort goes to the ledger, and a site refuses to take part
after ``secagg-max-aborts`` consecutive rounds aborted after it revealed, so grinding by
aborting gets at most that many tries, all on record. Sites that drop after the reveal are
missing vertices. The digest goes into the survivor set each site signs
(``messages.survivors_message``): t certified signatures vouch that their signers saw the same
committed set, hence the same identities and the same graph.
"""

from __future__ import annotations

import hashlib

from .messages import id_bytes


def seed_commitment(round_id: bytes, client_id: int, seed: bytes) -> bytes:
    """Return the hiding, binding commitment a site sends of its graph seed."""
    return hashlib.sha256(b"secagg-graph-commit" + round_id + id_bytes(client_id) + seed).digest()


def committed_digest(
    round_id: bytes,
    sampled: list[int],
    ids: list[int],
    fingerprints: list[bytes],
    commitments: list[bytes],
) -> bytes:
    """Return the digest of the sampled ids (the ring's vertices) and the committed set (in
    the order sent, which is sorted by id)."""
    digest = hashlib.sha256(b"secagg-committed" + round_id + id_bytes(len(sampled), *sampled))
    for client_id, fingerprint, commitment in zip(ids, fingerprints, commitments, strict=True):
        digest.update(id_bytes(client_id) + fingerprint + commitment)
    return digest.digest()


def graph_seed(digest: bytes, reveals: list[bytes]) -> bytes:
    """Return the graph's seed: a hash of the committed set's digest and every reveal."""
    hasher = hashlib.sha256(b"secagg-graph" + digest)
    for reveal in reveals:
        hasher.update(reveal)
    return hasher.digest()


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
