"""A split view of survivors plus colluding sites, run through the project's SecAgg+ classes.

The coordinator tells some of a victim's honest neighbours that the victim survived (they
reveal shares of its self-mask seed) and the others that it dropped (they reveal shares of its
pairwise key); colluding neighbours hand over both kinds. Each client signs who survived in
its own closed neighbourhood, so the coordinator forwards every signature it holds (those of
clients whose neighbourhood misses the victim hold in both views) plus the colluders', who
sign both views; an honest neighbour answers when t of its closed neighbourhood (itself
included) back its view, and refuses otherwise. With both secrets rebuilt, the victim's masked
input opens. The split needs 2t - k colluding neighbours; the derived threshold keeps
that above the colluding sites the threat model allows.

Mutations tried (defence removed -> test that fails):
- the old defaults restored in ``SecAggConfig._graph_parameters`` (``k = 2·ceil(2·log2 n)``,
  ``t = k // 2 + 1``, no privacy bound) -> ``test_the_split_view_is_refused_at_the_defaults``
  at n = 4, 10 and 100 (the victim's update opens within one quantisation step);
- the split-view term left out of the privacy bound (``bounds._privacy`` keeping only the
  disconnection term, so t falls back to k // 2 + 1) -> the same test at n = 100;
- colluding sites rounded down (``ThreatModel.corrupt`` with ``math.floor``) leaves the
  parameters at n = 4, 10, 100 unchanged (this test passes); it breaks
  ``test_any_corrupt_fraction_counts_at_least_one_colluding_site`` (test_secagg_bounds).
- the federation's size ignored (``ThreatModel.corrupt`` counting γ of the round only) ->
  ``test_a_sample_packed_with_colluders_is_refused_by_a_site_that_knows_the_federation``.
The old parameters are still reachable by stating that no site colludes (corrupt fraction 0):
``test_the_split_view_opens_the_victim_under_the_old_threshold`` shows the attack working
there, so the refusal above is the threshold's doing, not a broken attack.
"""

import math

import numpy as np
import pytest

from privacy.secagg import (
    CoordinatorMisbehaviourError,
    SecAggClient,
    SecAggConfig,
    Stage,
    crypto,
    messages,
    run_protocol_in_memory,
    shamir,
)
from privacy.secagg.client import share_point
from privacy.secagg.masking import commit_self_mask, pair_mask_key, self_mask_key
from privacy.secagg.quantize import dequantize
from privacy.secagg.settings import SiteFloor

LENGTH = 16
VICTIM = 0


def _updates(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.uniform(-1, 1, LENGTH).astype(np.float32) for _ in range(n)]


def _rebuild(shares: list[tuple[int, bytes]], t: int, valid) -> bytes | None:
    """The secret from t shares if that many were collected and it checks out, else None."""
    if len(shares) < t:
        return None
    secret = shamir.combine([p for p, _ in shares[:t]], [s for _, s in shares[:t]], 32)
    return secret if valid(secret) else None


def split_view_attack(config: SecAggConfig, colluders_needed_at_most: int):
    """Play the malicious coordinator against ``VICTIM``; return (opened update or None, run).

    Up to ``colluders_needed_at_most`` of the victim's neighbours collude: the coordinator holds
    their saved states (their shares, their signing keys). The victim's honest neighbours are
    split so that both kinds of share get as close to t as the colluders allow.
    """
    n, t = config.num_clients, config.threshold
    updates = _updates(n)
    run = run_protocol_in_memory(
        updates, None, config, keep_transcript=True, stop_before=Stage.CONSISTENCY
    )
    round_id = run.server.round_id
    neighbours = list(run.states[VICTIM]["peer_ids"])
    colluders = neighbours[:colluders_needed_at_most]
    honest = [c for c in neighbours if c not in colluders]
    # As many honest neighbours as needed towards t self-mask shares, the rest towards keys.
    told_alive = honest[: max(0, t - len(colluders))]
    told_dead = [c for c in honest if c not in told_alive]
    everyone = sorted(run.states)
    view_alive = everyone
    view_dead = [c for c in everyone if c != VICTIM]
    others = [c for c in everyone if c not in neighbours and c != VICTIM]
    groups = {
        **{c: view_alive for c in [VICTIM, *told_alive, *others[: len(others) // 2]]},
        **{c: view_dead for c in [*told_dead, *others[len(others) // 2 :]]},
    }

    # Consistency: each honest client signs the view it was given; colluders sign both.
    templates = run.server.requests()
    honest_signatures = {}
    for cid, view in groups.items():
        client = SecAggClient.from_state(run.states[cid])
        request = dict(templates[cid], **{messages.SURVIVORS: view})
        reply = client.handle(request)
        run.states[cid] = client.to_state()
        honest_signatures[cid] = reply[messages.SIG]
    colluder_signatures = {
        tuple(view): {
            cid: crypto.sign(
                run.states[cid]["sig_sk"],
                SecAggClient.from_state(run.states[cid]).consistency_message(view),
            )
            for cid in colluders
        }
        for view in (view_alive, view_dead)
    }

    # Unmask: ask each honest neighbour of the victim for the share its view allows.
    b_shares, sk_shares = [], []
    for cid in told_alive + told_dead:
        view = groups[cid]
        signed = {**honest_signatures, **colluder_signatures[tuple(view)]}
        peers = list(run.states[cid]["peer_ids"])
        request = {
            messages.STAGE: Stage.UNMASK.value,
            messages.ROUND: round_id,
            messages.SURVIVORS: view,
            **run.server.signers_payload(signed),
            messages.ALIVE: [p for p in peers if p in view],
            messages.DEAD: [p for p in peers if p not in view],
        }
        try:
            reply = SecAggClient.from_state(run.states[cid]).handle(request)
        except CoordinatorMisbehaviourError:
            continue  # too few of its closed neighbourhood back its view: it reveals nothing
        held = reply[messages.ALIVE] if view is view_alive else reply[messages.DEAD]
        kind = messages.B_SHARES if view is view_alive else messages.SK_SHARES
        share = reply[kind][held.index(VICTIM)]
        (b_shares if view is view_alive else sk_shares).append((share_point(cid), share))
    for cid in colluders:  # colluders hand over both shares of the victim they hold
        state = run.states[cid]
        at = list(state["share_src"]).index(VICTIM)
        b_shares.append((share_point(cid), state["share_b"][at]))
        sk_shares.append((share_point(cid), state["share_sk"][at]))

    setup_reply = run.transcript[Stage.SETUP.value][VICTIM][1]
    b_seed = _rebuild(
        b_shares,
        t,
        lambda s: commit_self_mask(s, round_id, VICTIM) == setup_reply[messages.B_COMMIT],
    )
    s_sk = _rebuild(sk_shares, t, lambda s: crypto.x25519_public(s) == setup_reply[messages.S_PK])
    if b_seed is None or s_sk is None:
        return None, updates
    masked = run.transcript[Stage.MASKED_INPUT.value][VICTIM][1][messages.MASKED].copy()
    masked -= crypto.expand_mask(self_mask_key(b_seed, round_id, VICTIM), masked.size, masked.dtype)
    for peer in run.states[VICTIM]["masked_with"]:
        peer_pk = run.transcript[Stage.SETUP.value][peer][1][messages.S_PK]
        key = pair_mask_key(s_sk, peer_pk, round_id, VICTIM, peer)
        mask = crypto.expand_mask(key, masked.size, masked.dtype)
        if peer > VICTIM:
            masked -= mask
        else:
            masked += mask
    opened, _ = dequantize(masked, config)
    return opened, updates


# n, old (k, t) of `k = 2·ceil(2·log2 n)` (or n - 1), t = k // 2 + 1, and the colluders the
# review used (2t - k of them).
OLD = [(4, 3, 2), (10, 9, 5), (100, 28, 15)]


@pytest.mark.parametrize(("n", "degree", "threshold"), OLD, ids=["n4", "n10", "n100"])
def test_the_split_view_opens_the_victim_under_the_old_threshold(n, degree, threshold):
    """The attack itself works: with the old t = k//2 + 1 (accepted only when no site is
    assumed to collude) one or two colluding neighbours open the victim's update."""
    config = SecAggConfig(
        num_clients=n, clip=1.0, degree=degree, threshold=threshold, corrupt_fraction=0.0
    )
    opened, updates = split_view_attack(config, 2 * threshold - degree)
    assert opened is not None
    assert np.abs(opened - updates[VICTIM]).max() <= config.step


@pytest.mark.parametrize("n", [4, 10, 100])
def test_the_split_view_is_refused_at_the_defaults(n):
    """At the default threat model every colluding site the bound allows (ceil(0.05 n): 1, 1
    and 5) is placed next to the victim, the worst placement: the derived threshold still
    needs more (2t - k), so neither secret of the victim can be rebuilt."""
    config = SecAggConfig(num_clients=n, clip=1.0)
    allowed = math.ceil(0.05 * n)  # the stated default, counted here, not by the code
    opened, _ = split_view_attack(config, allowed)
    assert opened is None
    assert 2 * config.threshold - config.degree > allowed


def test_a_sample_packed_with_colluders_is_refused_by_a_site_that_knows_the_federation():
    """With fraction-train < 1 the coordinator picks each round's sample. From a federation of
    1,000 sites at γ = 0.05 (50 colluding) it samples 100 that hold all 50: γ of the round
    counts 5, gives k = 26, t = 16, and the split view needs 6 colluding neighbours of the
    victim, of the 13 expected among its 26. A site that knows the federation's size
    (``secagg-federation-size``) refuses those parameters; derived with it, k = 72 and
    t = 62 need 52 colluding neighbours, more than exist."""
    packed = SecAggConfig(num_clients=100, clip=1.0)
    opened, updates = split_view_attack(packed, 2 * packed.threshold - packed.degree)
    assert opened is not None
    assert np.abs(opened - updates[VICTIM]).max() <= packed.step
    floor = SiteFloor(corrupt_fraction=0.05, sigma=40, federation_size=1000)
    with pytest.raises(CoordinatorMisbehaviourError, match="secagg-federation-size = 1000"):
        floor.check(packed)
    derived = SecAggConfig(num_clients=100, clip=1.0, federation_size=1000)
    floor.check(derived)
    assert 2 * derived.threshold - derived.degree > 50


def test_a_split_view_signed_below_threshold_is_still_refused_by_honest_clients():
    """The consistency check stays in force: an honest neighbour shown a view with fewer than
    t valid signatures refuses (the split above works only because colluders sign both)."""
    config = SecAggConfig(num_clients=10, clip=1.0)
    run = run_protocol_in_memory(_updates(10), None, config, stop_before=Stage.CONSISTENCY)
    cid = run.states[VICTIM]["peer_ids"][0]
    client = SecAggClient.from_state(run.states[cid])
    view = [c for c in sorted(run.states) if c != VICTIM]
    reply = client.handle(dict(run.server.requests()[cid], **{messages.SURVIVORS: view}))
    request = {
        messages.STAGE: Stage.UNMASK.value,
        messages.ROUND: run.server.round_id,
        messages.SURVIVORS: view,
        **run.server.signers_payload({cid: reply[messages.SIG]}),
        messages.ALIVE: [],
        messages.DEAD: [VICTIM],
    }
    with pytest.raises(CoordinatorMisbehaviourError, match="only 1 certified signatures"):
        client.handle(request)
