"""The k-regular communication graph of SecAgg+, drawn from a seed the coordinator cannot steer.

Each client shares secrets with, and masks against, only its neighbours. The graph is a ring-shaped
Harary graph over a pseudo-random order of the clients: the order comes from hashing a public
seed with each client id, so every client recomputes its own neighbourhood and can tell when
the coordinator hands it the wrong peers.

Whoever can predict the seed before fixing the round can grind it: try round ids or sets of
replies offline until colluders land next to a victim. So the seed is drawn by the sites,
commit-then-reveal:

1. setup: each site draws a fresh 32-byte seed and sends only ``seed_commitment`` of it;
2. reveal: the coordinator sends every site the *committed set*: node ids, certified identity
   fingerprints and commitments of the sites it keeps. A site checks it is in it, that no id
   or identity repeats, keeps its digest (``committed_digest``), and only then reveals;
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
    round_id: bytes, ids: list[int], fingerprints: list[bytes], commitments: list[bytes]
) -> bytes:
    """Return the digest of the committed set (in the order sent, which is sorted by id)."""
    digest = hashlib.sha256(b"secagg-committed" + round_id)
    for client_id, fingerprint, commitment in zip(ids, fingerprints, commitments, strict=True):
        digest.update(id_bytes(client_id) + fingerprint + commitment)
    return digest.digest()


def graph_seed(digest: bytes, reveals: list[bytes]) -> bytes:
    """Return the graph's seed: a hash of the committed set's digest and every reveal."""
    hasher = hashlib.sha256(b"secagg-graph" + digest)
    for reveal in reveals:
        hasher.update(reveal)
    return hasher.digest()


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
