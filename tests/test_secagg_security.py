"""What the coordinator can and cannot get out of SecAgg+, and what honest clients refuse."""

import logging

import numpy as np
import pytest
from scipy.stats import chisquare

from privacy.secagg import (
    AuthenticationError,
    CoordinatorMisbehaviourError,
    MalformedPayloadError,
    SecAggClient,
    SecAggConfig,
    Stage,
    crypto,
    messages,
    run_protocol_in_memory,
    shamir,
)
from privacy.secagg.masking import pair_mask_key, self_mask_key

N = 8
CONFIG = SecAggConfig(num_clients=N, clip=1.0, degree=N - 1, threshold=5)


def _updates(d: int = 64, n: int = N):
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, d).astype(np.float32) for _ in range(n)]


def _paused_before(stage: Stage, drop_at=None):
    return run_protocol_in_memory(_updates(), None, CONFIG, drop_at, stop_before=stage)


def _answer(run, requests):
    """Let every client answer its request; return {client: reply or the error it raised}."""
    out = {}
    for cid, request in requests.items():
        client = SecAggClient.from_state(run.states[cid])
        try:
            out[cid] = client.handle(request, _updates()[cid])
        except Exception as err:  # noqa: BLE001 - the test inspects what each client raised
            out[cid] = err
        run.states[cid] = client.to_state()
    return out


def test_clients_refuse_a_peer_listed_as_both_dropped_and_surviving(caplog):
    run = _paused_before(Stage.UNMASK)
    requests = run.server.requests()
    victim = 3
    for cid, request in requests.items():
        if cid != victim:
            request[messages.DEAD] = [*request[messages.DEAD], victim]
    with caplog.at_level(logging.WARNING, logger="privacy.secagg.client"):
        answers = _answer(run, requests)
    for cid, answer in answers.items():
        if cid == victim:
            assert isinstance(answer, dict)  # its own request was honest
        else:
            assert isinstance(answer, CoordinatorMisbehaviourError)
            assert "both dropped and surviving" in str(answer)
    assert "refuses the coordinator" in caplog.text


def test_clients_never_give_both_kinds_of_share_of_one_peer():
    run = _paused_before(Stage.UNMASK)
    requests = run.server.requests()
    first = _answer(run, requests)  # honest: self-mask shares of every survivor
    assert all(isinstance(a, dict) for a in first.values())
    for request in requests.values():  # now ask for the pairwise keys of the same peers
        request[messages.DEAD], request[messages.ALIVE] = request[messages.ALIVE], []
        request[messages.SURVIVORS] = list(request[messages.SURVIVORS])
    second = _answer(run, requests)
    for answer in second.values():
        assert isinstance(answer, CoordinatorMisbehaviourError)
        # A pairwise-key share of a signed survivor is refused before history is even needed.
        assert "signed survivors" in str(answer)


def test_a_dropped_peer_cannot_later_be_declared_alive():
    run = _paused_before(Stage.UNMASK, drop_at={Stage.MASKED_INPUT: {2}})
    requests = run.server.requests()
    assert all(2 in r[messages.DEAD] for r in requests.values())
    assert all(isinstance(a, dict) for a in _answer(run, requests).values())
    for request in requests.values():
        request[messages.ALIVE], request[messages.DEAD] = [2], []
    for answer in _answer(run, requests).values():
        assert isinstance(answer, CoordinatorMisbehaviourError)


def test_survivor_set_must_be_the_signed_one_with_threshold_signatures():
    run = _paused_before(Stage.UNMASK, drop_at={Stage.MASKED_INPUT: {2}})
    requests = run.server.requests()
    forged = {c: dict(r, survivors=[*r[messages.SURVIVORS], 2]) for c, r in requests.items()}
    for answer in _answer(run, forged).values():
        assert "differs from the one I signed" in str(answer)
    few = {}  # 3 neighbours' certified signatures and the client's own: t - 1 of the closed
    for cid, request in requests.items():  # neighbourhood
        signatures = dict(
            zip(request[messages.SIGNER_IDS][:3], request[messages.SIGNATURES][:3], strict=True)
        )
        few[cid] = {**request, **run.server.signers_payload(signatures)}
    for answer in _answer(run, few).values():
        assert "only 4 certified signatures" in str(answer)


def test_a_split_view_of_survivors_gets_no_shares_at_all():
    # The coordinator tells one half that client 0 survived and the other half that it dropped,
    # hoping to collect both its self-mask shares and its pairwise-key shares.
    run = _paused_before(Stage.CONSISTENCY)
    requests = run.server.requests()
    full = requests[0][messages.SURVIVORS]
    group_a, group_b = [0, 1, 3, 5], [2, 4, 6, 7]
    for cid in group_b:
        requests[cid] = dict(requests[cid], survivors=[c for c in full if c != 0])
    signatures = _answer(run, requests)
    assert all(isinstance(a, dict) for a in signatures.values())
    asks = {}
    for cid, view in [(c, full) for c in group_a] + [
        (c, requests[c]["survivors"]) for c in group_b
    ]:
        peers = [p for p in full if p != cid]
        asks[cid] = {
            messages.STAGE: Stage.UNMASK.value,
            messages.ROUND: run.server.round_id,
            messages.SURVIVORS: view,
            # every signature, of both views
            **run.server.signers_payload({c: r[messages.SIG] for c, r in signatures.items()}),
            messages.ALIVE: [p for p in peers if p in view],
            messages.DEAD: [p for p in peers if p not in view],
        }
    for answer in _answer(run, asks).values():
        assert isinstance(answer, CoordinatorMisbehaviourError)
        assert "only 4 certified signatures" in str(answer)


def _chi_square_p(values: np.ndarray) -> float:
    counts = np.bincount(values.view(np.uint8), minlength=256)
    return chisquare(counts).pvalue


def test_masked_vector_is_indistinguishable_from_uniform():
    d = 20_000
    updates = [np.zeros(d, dtype=np.float32) for _ in range(N)]  # the most regular input
    run = run_protocol_in_memory(updates, None, CONFIG, keep_transcript=True)
    masked = run.transcript[Stage.MASKED_INPUT.value][4][1][messages.MASKED]
    assert masked.dtype == np.uint32
    assert _chi_square_p(masked) > 1e-4
    # Top bucket test on the values themselves (16 equal ranges of the modulus).
    buckets = np.bincount((masked >> np.uint32(28)).astype(np.int64), minlength=16)
    assert chisquare(buckets).pvalue > 1e-4
    plain = np.full(d + 1, (CONFIG.levels - 1) // 2, dtype=np.uint32)
    assert _chi_square_p(plain) < 1e-10  # the same test does see unmasked structure


def test_coordinator_view_below_threshold_reveals_nothing():
    d = 4000
    updates = _updates(d)
    run = run_protocol_in_memory(updates, None, CONFIG, keep_transcript=True)
    view = run.transcript
    victim = 4
    masked = view[Stage.MASKED_INPUT.value][victim][1][messages.MASKED]
    # An honest run hands the coordinator the victim's self-mask seed (it survived) ...
    shares = [
        (c + 1, reply[messages.B_SHARES][reply[messages.ALIVE].index(victim)])
        for c, (_, reply) in view[Stage.UNMASK.value].items()
        if victim in reply[messages.ALIVE]
    ]
    seed = shamir.combine([p for p, _ in shares], [s for _, s in shares], 32)
    without_self = masked - crypto.expand_mask(
        self_mask_key(seed, run.server.round_id, victim), masked.size, masked.dtype
    )
    # ... but not a single share of its pairwise key, so its input stays masked.
    assert all(victim not in reply[messages.DEAD] for _, reply in view["unmask"].values())
    assert _chi_square_p(without_self) > 1e-4
    # With t - 1 shares of the pairwise key (say, some lied-to clients gave theirs up), the
    # rebuild is a wrong key: its public half does not match the one the victim advertised.
    client = SecAggClient.from_state(run.states[victim])
    held = []
    for peer in client.peer_ids[: CONFIG.threshold]:
        holder = SecAggClient.from_state(run.states[peer])
        held.append((peer + 1, holder.share_sk[holder.share_src.index(victim)]))
    points, sk_shares = [p for p, _ in held], [s for _, s in held]
    guess = shamir.combine(points[:-1], sk_shares[:-1], 32)
    assert crypto.x25519_public(guess) != crypto.x25519_public(client.s_sk)
    assert shamir.combine(points, sk_shares, 32) == client.s_sk
    # The right key would remove exactly the pairwise masks and expose the quantised input.
    for peer, peer_pk in zip(client.peer_ids, client.peer_s_pk, strict=True):
        key = pair_mask_key(client.s_sk, peer_pk, run.server.round_id, victim, peer)
        mask = crypto.expand_mask(key, masked.size, masked.dtype)
        without_self = without_self - mask if victim < peer else without_self + mask
    recovered = without_self[:-1].astype(np.float64) * CONFIG.step - CONFIG.clip
    assert np.abs(recovered - updates[victim]).max() <= CONFIG.step


def test_tampered_or_relabelled_ciphertexts_are_rejected():
    run = _paused_before(Stage.MASKED_INPUT)
    requests = run.server.requests()
    request = requests[1]
    tampered = dict(request)
    ct = bytearray(request[messages.CIPHERTEXTS][0])
    ct[20] ^= 1
    tampered[messages.CIPHERTEXTS] = [bytes(ct), *request[messages.CIPHERTEXTS][1:]]
    client = SecAggClient.from_state(run.states[1])
    with pytest.raises(AuthenticationError, match=r"shares from client \d+ failed authentication"):
        client.masked_input(tampered, _updates()[1], 1)
    swapped = dict(request)
    swapped[messages.SRC_IDS] = [request[messages.SRC_IDS][1], request[messages.SRC_IDS][0]]
    swapped[messages.SRC_IDS] += request[messages.SRC_IDS][2:]
    with pytest.raises(AuthenticationError, match="failed authentication"):
        SecAggClient.from_state(run.states[1]).masked_input(swapped, _updates()[1], 1)


def test_wrong_length_vectors_are_rejected():
    run = _paused_before(Stage.MASKED_INPUT)
    requests = run.server.requests()
    client = SecAggClient.from_state(run.states[0])
    with pytest.raises(MalformedPayloadError, match="has 63 values but the round expects 64"):
        client.masked_input(requests[0], np.zeros(63, dtype=np.float32), 1)
    replies = _answer(run, requests)
    replies[6] = dict(replies[6], masked=replies[6][messages.MASKED][:-1])
    run.server.receive(replies)
    assert "client 6" in run.server.rejected[6]
    assert "expected uint32[65]" in run.server.rejected[6]
    assert run.server.dropped[Stage.MASKED_INPUT.value] == [6]
    while not run.server.done:  # the round still completes without client 6
        run.server.receive(_answer(run, run.server.requests()))
    result = run.server.result()
    expected = sum(np.clip(_updates()[i], -1, 1).astype(np.float64) for i in result.survivors)
    assert 6 not in result.survivors
    assert np.abs(result.weighted_sum - expected).max() <= CONFIG.step * len(result.survivors)


def test_wrong_neighbours_or_unsigned_keys_are_refused():
    run = _paused_before(Stage.SHARE_KEYS)
    request = run.server.requests()[0]
    forged = dict(request)
    forged[messages.PEER_S_PK] = [crypto.x25519_keypair()[1], *request[messages.PEER_S_PK][1:]]
    with pytest.raises(AuthenticationError, match="are not signed"):
        SecAggClient.from_state(run.states[0]).share_keys(forged)
    dropped_peer = dict(request)
    for key in (messages.PEER_IDS, messages.PEER_C_PK, messages.PEER_S_PK):
        dropped_peer[key] = request[key][1:]
    with pytest.raises(CoordinatorMisbehaviourError, match="not my neighbours"):
        SecAggClient.from_state(run.states[0]).share_keys(dropped_peer)


def _unmask_replies():
    run = _paused_before(Stage.UNMASK)
    requests = run.server.requests()
    return run, requests, _answer(run, requests)


def test_a_short_share_drops_its_sender_not_the_round():
    """Mutation tried: removing the share-length check in ``_check_unmask`` makes
    ``shamir.combine`` raise out of ``receive`` and this test fails."""
    run, _, replies = _unmask_replies()
    sender = next(c for c, r in replies.items() if r[messages.B_SHARES])
    short = [s[:-1] for s in replies[sender][messages.B_SHARES]]
    replies[sender] = dict(replies[sender], **{messages.B_SHARES: short})
    run.server.receive(replies)
    assert "bytes long" in run.server.rejected[sender]
    result = run.server.result()
    expected = sum(np.clip(_updates()[i], -1, 1).astype(np.float64) for i in result.survivors)
    assert np.abs(result.weighted_sum - expected).max() <= CONFIG.step * len(result.survivors)


def test_a_wrong_share_is_routed_around_and_recorded():
    """Mutation tried: rebuilding from the first t shares only (the old ``_rebuild``) aborts
    the round with RoundFailedError and this test fails."""
    run, _, replies = _unmask_replies()
    first = min(replies)
    bad = [bytes(b ^ 0xFF for b in s) for s in replies[first][messages.B_SHARES]]
    replies[first] = dict(replies[first], **{messages.B_SHARES: bad})
    run.server.receive(replies)
    result = run.server.result()
    assert result.unmask_errors, "the wrong share must be recorded"
    expected = sum(np.clip(_updates()[i], -1, 1).astype(np.float64) for i in result.survivors)
    assert np.abs(result.weighted_sum - expected).max() <= CONFIG.step * len(result.survivors)
