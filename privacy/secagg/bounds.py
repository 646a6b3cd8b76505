"""Graph degree k and threshold t of SecAgg+ derived from a stated threat model.

Bell et al. (CCS 2020, "Secure single-server aggregation with (poly)logarithmic overhead")
prove SecAgg+ private and correct on a k-regular graph when, except with small probability:

- the graph of honest survivors stays connected (else the coordinator learns partial sums);
- no honest client has so many corrupt neighbours that the coordinator can rebuild both of
  its secrets. Against a coordinator that lies about who survived (a *split view*: survivor
  to some neighbours, dropped to others), honest neighbours each reveal one kind of share
  and colluding neighbours reveal both, so both kinds reach ``t`` once
  ``(k - c) + 2c >= 2t``, i.e. with ``c >= 2t - k`` colluding neighbours;
- every client keeps at least ``t`` surviving neighbours, so its secrets can be rebuilt.

Their concrete parameters (and Google's reference parameter finder for the Harary graph)
come from tail bounds of the hypergeometric distribution, not from asymptotic constants:
this module computes those tails exactly, with integers, so the coordinator and every site
derive the same (k, t) from the same numbers and a site can recompute and check them.

The graph (`graph.neighbours`) is a ring Harary graph over a pseudo-random order of the
sampled clients. For a fixed corrupt set chosen before the order is drawn, a client's k
neighbours are a uniformly random k-subset of the other n - 1 clients, so the number of
corrupt neighbours is hypergeometric; removing vertices disconnects the ring only if two
disjoint runs of k/2 consecutive vertices are all corrupt or dropped.

The dropout bound assumes dropouts do not depend on the graph; a coordinator that drops
honest sites on purpose can only make the round fail (correctness), while privacy rests on
the corrupt-neighbour bound, which holds for every choice of survivors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class ThreatModel:
    """What a round must withstand.

    Attributes
    ----------
    corrupt_fraction : float
        γ: fraction of the sampled sites that may collude with the coordinator; the bound
        counts ``ceil(γ n)`` of them, so any γ > 0 means at least one colluding site.
    dropout_fraction : float
        δ: fraction of the sampled sites that may drop out during a round (``floor(δ n)``).
    sigma : int
        σ: the privacy bound fails with probability at most 2^-σ over the graph.
    eta : int
        η: a round fails for too many dropouts with probability at most 2^-η.
    federation_size : int
        Sites in the whole federation, when a round samples only some of them: γ then counts
        colluders among all of them, since a coordinator that picks the sample can put every
        colluding site in a round of few honest ones. 0: the round's own size.
    """

    corrupt_fraction: float
    dropout_fraction: float
    sigma: int
    eta: int
    federation_size: int = 0

    def corrupt(self, n: int) -> int:
        """Sites that may collude with the coordinator in a round of ``n`` (rounded up): γ of
        the federation, all of whom may have been sampled."""
        return math.ceil(Fraction(str(self.corrupt_fraction)) * max(n, self.federation_size))

    def dropouts(self, n: int) -> int:
        """Sites that may drop out among ``n`` (rounded down, as δ is an expected rate)."""
        return math.floor(Fraction(str(self.dropout_fraction)) * n)


@dataclass(frozen=True)
class GraphBounds:
    """A (k, t) pair and what it guarantees for ``num_clients`` under a threat model.

    ``privacy_failure`` bounds the probability that the graph lets the coordinator with its
    colluding sites open an honest site's update or a partial sum; ``correctness_failure``
    bounds the probability that ``dropouts`` dropouts leave some site with fewer than ``t``
    surviving neighbours (the round then fails, nothing leaks).
    """

    num_clients: int
    degree: int
    threshold: int
    corrupt: int
    dropouts: int
    privacy_failure: float
    correctness_failure: float
    private: bool  # privacy_failure <= 2^-σ, decided on the exact fraction
    correct: bool  # correctness_failure <= 2^-η, decided on the exact fraction

    @property
    def colluders_needed(self) -> int:
        """Colluding neighbours a split view needs to open one site's update: 2t - k."""
        return 2 * self.threshold - self.degree

    def as_record(self, threat: ThreatModel) -> dict[str, Any]:
        """The bounds and the threat model they hold under, as one flat ledger block."""
        return {**asdict(threat), **asdict(self), "colluders_needed": self.colluders_needed}


def _tail(population: int, marked: int, draws: int, at_least: int) -> int:
    """Numerator of P[X >= at_least] for X ~ Hypergeometric(population, marked, draws).

    The denominator is ``comb(population, draws)``; integers keep the tail exact down to the
    2^-60 region where floating-point sums of terms lose every digit.
    """
    low = max(at_least, 0, draws - (population - marked))
    return sum(
        math.comb(marked, i) * math.comb(population - marked, draws - i)
        for i in range(low, min(marked, draws) + 1)
    )


def _disconnection(n: int, degree: int, removed: int) -> Fraction:
    """Union bound on the ring losing two disjoint runs of degree/2 removed vertices.

    Two runs hold ``degree`` removed vertices; there are at most n (n - degree - 1) / 2 pairs
    of places, and a given set of ``degree`` places is all removed with probability
    removed! (n - degree)! / (n! (removed - degree)!). A complete graph never disconnects.
    """
    if degree >= n - 1 or degree > removed:
        return Fraction(0)
    places = Fraction(n * (n - degree - 1), 2)
    return places * Fraction(math.perm(removed, degree), math.perm(n, degree))


def _privacy(n: int, degree: int, threshold: int, threat: ThreatModel) -> Fraction:
    """P[disconnected] + n · P[a client's corrupt neighbours reach 2t - k] (union bounds)."""
    corrupt = min(threat.corrupt(n), n - 1)
    others = n - 1  # a client's neighbours are drawn from the other clients
    opened = Fraction(
        n * _tail(others, corrupt, degree, 2 * threshold - degree), math.comb(others, degree)
    )
    removed = corrupt + threat.dropouts(n)
    return min(Fraction(1), _disconnection(n, degree, removed) + opened)


def _correctness(n: int, degree: int, threshold: int, threat: ThreatModel) -> Fraction:
    """n · P[a client has fewer than t surviving neighbours] (union bound)."""
    others = n - 1
    survivors = max(others - threat.dropouts(n), 0)
    total = math.comb(others, degree)
    stranded = total - _tail(others, survivors, degree, threshold)
    return min(Fraction(1), Fraction(n * stranded, total))


@lru_cache(maxsize=256)
def evaluate(n: int, degree: int, threshold: int, threat: ThreatModel) -> GraphBounds:
    """Return what ``(degree, threshold)`` guarantees for ``n`` clients under ``threat``."""
    privacy = _privacy(n, degree, threshold, threat)
    correctness = _correctness(n, degree, threshold, threat)
    return GraphBounds(
        num_clients=n,
        degree=degree,
        threshold=threshold,
        corrupt=min(threat.corrupt(n), n - 1),
        dropouts=threat.dropouts(n),
        privacy_failure=float(privacy),
        correctness_failure=float(correctness),
        private=privacy <= Fraction(1, 2**threat.sigma),
        correct=correctness <= Fraction(1, 2**threat.eta),
    )


def private_threshold(n: int, degree: int, threat: ThreatModel) -> int | None:
    """Smallest threshold whose privacy failure is at most 2^-σ for ``degree``, or None.

    The failure falls as t grows (a split view needs more colluders), so a bisection finds
    it; the smallest private t is also the one that survives the most dropouts (k - t).
    """
    goal = Fraction(1, 2**threat.sigma)
    low, high = max(1, degree // 2 + 1), degree
    if _privacy(n, degree, high, threat) > goal:
        return None
    while low < high:
        mid = (low + high) // 2
        if _privacy(n, degree, mid, threat) <= goal:
            high = mid
        else:
            low = mid + 1
    return low


@lru_cache(maxsize=64)
def derive(n: int, threat: ThreatModel) -> GraphBounds | None:
    """Return the smallest degree (even, or n - 1) with a threshold meeting σ and η, or None.

    The smallest degree is the cheapest: a client's work and bytes grow with k (and Shamir
    sharing with k · t), which is what keeps the per-client cost logarithmic in n.
    """
    for degree in [*range(2, n - 1, 2), n - 1]:
        if degree < 1:
            continue
        threshold = private_threshold(n, degree, threat)
        if threshold is None:
            continue
        bounds = evaluate(n, degree, threshold, threat)
        if bounds.correct:
            return bounds
    return None
