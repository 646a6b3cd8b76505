"""Shamir secret sharing of byte strings over the Mersenne prime 2^127 - 1.

A secret is cut into 15-byte chunks (each below the prime) and all chunks are shared with one
batch of random polynomials, so a 32-byte key costs three field elements per share. Reduction
modulo a Mersenne prime and Python's big ints keep both directions far below a millisecond
per secret for neighbourhoods of 100; Lagrange weights are cached per set of share points.
"""

from __future__ import annotations

import secrets
from functools import lru_cache

from .errors import MalformedPayloadError

PRIME = (1 << 127) - 1
_CHUNK = 15  # bytes per field element: 120 bits < 127
_ELEMENT = 16  # bytes per encoded field element


def _chunks(secret: bytes) -> list[int]:
    return [int.from_bytes(secret[i : i + _CHUNK], "big") for i in range(0, len(secret), _CHUNK)]


def split(secret: bytes, points: list[int], threshold: int) -> list[bytes]:
    """Return one share of ``secret`` per point; any ``threshold`` of them rebuild it.

    Parameters
    ----------
    secret : bytes
        The secret (any length; 32-byte keys in this protocol).
    points : list of int
        Distinct non-zero evaluation points, one per share holder (below the prime).
    threshold : int
        Number of shares needed to rebuild; fewer reveal nothing about the secret.
    """
    if len(set(points)) != len(points) or not all(0 < x < PRIME for x in points):
        raise ValueError("share points must be distinct and in (0, 2^127 - 1)")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold {threshold} must be in [1, {len(points)}]")
    polys = [
        [c] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)] for c in _chunks(secret)
    ]
    shares = []
    for x in points:
        values = []
        for poly in polys:
            acc = 0
            for coeff in reversed(poly):  # Horner's rule
                acc = (acc * x + coeff) % PRIME
            values.append(acc.to_bytes(_ELEMENT, "big"))
        shares.append(b"".join(values))
    return shares


@lru_cache(maxsize=4096)
def _lagrange_at_zero(points: tuple[int, ...]) -> tuple[int, ...]:
    weights = []
    for i, xi in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        weights.append(num * pow(den, PRIME - 2, PRIME) % PRIME)
    return tuple(weights)


def combine(points: list[int], shares: list[bytes], secret_len: int) -> bytes:
    """Rebuild a secret of ``secret_len`` bytes from shares at ``points``.

    With fewer shares than the threshold the result is a uniformly random-looking wrong
    secret; callers check the result against a public commitment.
    """
    if len(points) != len(shares) or len(set(points)) != len(points) or not points:
        raise ValueError("need distinct points, one per share")
    n_elements = -(-secret_len // _CHUNK)
    if any(len(s) != n_elements * _ELEMENT for s in shares):
        raise MalformedPayloadError(
            f"a share has the wrong length (expected {n_elements * _ELEMENT} bytes)"
        )
    weights = _lagrange_at_zero(tuple(points))
    out = []
    for e in range(n_elements):
        lo, hi = e * _ELEMENT, (e + 1) * _ELEMENT
        acc = sum(w * int.from_bytes(s[lo:hi], "big") for w, s in zip(weights, shares, strict=True))
        size = min(_CHUNK, secret_len - e * _CHUNK)
        acc %= PRIME
        if acc >= 1 << (8 * size):
            acc &= (1 << (8 * size)) - 1  # wrong shares: keep the length, the check will fail
        out.append(acc.to_bytes(size, "big"))
    return b"".join(out)
