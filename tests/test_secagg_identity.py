"""A coordinator that impersonates sites, run through the project's own SecAgg+ classes.

The coordinator relays every key a site sees. Each attack below is what it can do with the
keys it can make itself (its own CA, its own Ed25519 and X25519 keys, honest sites' public
certificates and old signatures) and at most one colluding site's long-term key; each is run
at the defaults (4 and 10 sites) and at 100 sites with the stated corrupt fraction.

Mutations tried (defence removed -> test that fails):
- ``SecAggClient._certified`` made a no-op (peer round keys no longer checked against the
  CA) -> ``test_a_coordinator_answering_for_every_other_node_id_is_refused``,
  ``test_a_round_key_the_certified_site_did_not_sign_is_refused``,
  ``test_a_certificate_from_another_ca_is_refused``,
  ``test_one_colluding_site_cannot_stand_for_several_node_ids`` and
  ``test_survivor_signatures_count_only_from_distinct_certified_sites``;
- ``identity.certified_key`` without ``verify_directly_issued_by`` (any certificate
  accepted) -> ``test_a_coordinator_answering_for_every_other_node_id_is_refused`` and
  ``test_a_certificate_from_another_ca_is_refused``;
- the round id left out of ``messages.identity_message`` -> ``test_a_round_key_the_certified_
  site_did_not_sign_is_refused`` (a signature replayed from an earlier round is accepted);
- the repeated-identity check of the committed set (``SecAggClient.reveal``) or the check that
  a certificate is the identity committed for its node id (``_certified``) removed ->
  ``test_one_colluding_site_cannot_stand_for_several_node_ids``; the latter also breaks
  ``test_survivor_signatures_count_only_from_distinct_certified_sites``;
- the extended-key-usage check in ``certified_key`` removed (the SuperLink's server
  certificate accepted as a site's) -> ``test_the_superlinks_certificate_cannot_vouch_for_
  a_site`` and ``test_identity_files_that_do_not_fit_are_refused_naming_the_file``.
"""

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedvlm.credentials import make_credentials, new_ca, site_certificate
from fedvlm.errors import FedVLMError
from privacy.secagg import (
    AuthenticationError,
    CoordinatorMisbehaviourError,
    SecAggClient,
    SecAggConfig,
    Stage,
    crypto,
    messages,
    run_protocol_in_memory,
)
from privacy.secagg.graph import closed_neighbourhoods
from privacy.secagg.identity import (
    SiteIdentity,
    ephemeral_federation,
    simulation_identity,
)

VICTIM = 0
SIZES = [4, 10, 100]  # defaults: 4 and 10 sites; and 100 sites at the stated corrupt fraction


def _config(n: int) -> SecAggConfig:
    return SecAggConfig(num_clients=n, clip=1.0)


def _updates(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.uniform(-1, 1, 8).astype(np.float32) for _ in range(n)]


def _paused(n: int, stage: Stage, identities=None):
    return run_protocol_in_memory(
        _updates(n), None, _config(n), stop_before=stage, identities=identities
    )


def _victim_answers(run, request):
    return SecAggClient.from_state(run.states[VICTIM]).handle(request, _updates(len(run.states)))


def _forge_round_keys(request: dict, at: int, cert: bytes, id_sig_for, sig_keys=None) -> None:
    """Put coordinator-made round keys for the ``at``-th neighbour into ``request``.

    The bundle is signed with the round signing key ``sig_keys`` (a fresh one of the
    coordinator's by default), so only the identity check can tell; ``id_sig_for(message)``
    is what vouches for that key.
    """
    round_id = request[messages.ROUND]
    peer = request[messages.PEER_IDS][at]
    sig_sk, sig_pk = sig_keys or crypto.ed25519_keypair()
    c_pk, s_pk = crypto.x25519_keypair()[1], crypto.x25519_keypair()[1]
    commit = request[messages.PEER_B_COMMIT][at]
    columns = {
        messages.PEER_C_PK: c_pk,
        messages.PEER_S_PK: s_pk,
        messages.PEER_SIG_PK: sig_pk,
        messages.PEER_SIG: crypto.sign(
            sig_sk, messages.bundle_message(round_id, peer, c_pk, s_pk, commit)
        ),
        messages.PEER_CERT: cert,
        messages.PEER_ID_SIG: id_sig_for(messages.identity_message(round_id, peer, sig_pk)),
    }
    for key, value in columns.items():
        request[key] = list(request[key])
        request[key][at] = value


def _ecdsa(key: ec.EllipticCurvePrivateKey):
    return lambda message: key.sign(message, ec.ECDSA(hashes.SHA384()))


@pytest.mark.parametrize("n", SIZES)
def test_a_coordinator_answering_for_every_other_node_id_is_refused(n):
    """Attack 1 of issue 15: the coordinator plays every other node id itself, with keys and
    certificates of its own CA, hoping to collect all the victim's shares. The victim's CA
    is its own copy of the federation's, so it refuses at key sharing: no share leaves it."""
    federation = ephemeral_federation([VICTIM])
    forged = ephemeral_federation(range(1, n))  # the coordinator's own CA
    run = _paused(n, Stage.SHARE_KEYS, {**federation, **forged})
    request = run.server.requests()[VICTIM]
    with pytest.raises(AuthenticationError, match="not issued by the federation's CA"):
        _victim_answers(run, request)


@pytest.mark.parametrize("n", SIZES)
def test_a_round_key_the_certified_site_did_not_sign_is_refused(n):
    """A neighbour's real certificate with a round key the coordinator made: unsigned, signed
    by the coordinator's own key, or vouched for by the site's signature from an earlier
    round (even with that round's signing key leaked)."""
    sites = ephemeral_federation(range(n))
    earlier = _paused(n, Stage.SHARE_KEYS, sites)
    run = _paused(n, Stage.SHARE_KEYS, sites)
    honest = run.server.requests()[VICTIM]
    assert isinstance(_victim_answers(run, dict(honest)), dict)
    peer = honest[messages.PEER_IDS][0]
    cert = honest[messages.PEER_CERT][0]
    old = earlier.states[peer]
    attempts = {
        "unsigned": (lambda message: b"", None),
        "signed by the coordinator": (_ecdsa(ec.generate_private_key(ec.SECP384R1())), None),
        "replayed from an earlier round": (
            lambda message: sites[peer].sign(
                messages.identity_message(earlier.server.round_id, peer, old["sig_pk"])
            ),
            (old["sig_sk"], old["sig_pk"]),
        ),
    }
    for id_sig_for, sig_keys in attempts.values():
        request = dict(honest)
        _forge_round_keys(request, 0, cert, id_sig_for, sig_keys)
        with pytest.raises(AuthenticationError, match="round key not signed"):
            _victim_answers(run, request)


@pytest.mark.parametrize("n", SIZES)
def test_a_certificate_from_another_ca_is_refused(n):
    """The coordinator issues itself a certificate in a neighbour's very name, from its own
    CA, and signs its round key with the matching key."""
    run = _paused(n, Stage.SHARE_KEYS)
    request = run.server.requests()[VICTIM]
    peer = request[messages.PEER_IDS][0]
    ca_key, ca_cert = new_ca(days=1)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = site_certificate(f"site-{peer}", key.public_key(), ca_cert, ca_key, days=1)
    _forge_round_keys(request, 0, cert.public_bytes(serialization.Encoding.DER), _ecdsa(key))
    with pytest.raises(AuthenticationError, match="not issued by the federation's CA"):
        _victim_answers(run, request)


@pytest.mark.parametrize("n", SIZES)
def test_the_superlinks_certificate_cannot_vouch_for_a_site(n, tmp_path):
    """The coordinator holds the SuperLink's server.key, certified by the federation's own
    CA: it signs a neighbour's round key with it and sends server.crt along."""
    made = make_credentials(tmp_path, sites=[f"s{i}" for i in range(n)])
    sites = {
        i: SiteIdentity.from_files(key, made.site_certs[f"s{i}"], made.ca_cert)
        for i, (key, _) in enumerate(made.site_keys[f"s{i}"] for i in range(n))
    }
    run = _paused(n, Stage.SHARE_KEYS, sites)
    request = run.server.requests()[VICTIM]
    server_key = serialization.load_pem_private_key(made.server_key.read_bytes(), None)
    server_cert = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    der = server_cert.public_bytes(serialization.Encoding.DER)
    _forge_round_keys(request, 0, der, _ecdsa(server_key))
    with pytest.raises(AuthenticationError, match="the SuperLink's cannot vouch"):
        _victim_answers(run, request)


@pytest.mark.parametrize("n", SIZES)
def test_one_colluding_site_cannot_stand_for_several_node_ids(n):
    """With one colluding site's long-term key the coordinator vouches for round keys of its
    own under a second node id: refused whether the committed set lists the colluder's
    identity twice (at the reveal) or the other id's true identity (at key sharing)."""
    sites = ephemeral_federation(range(n))
    run = _paused(n, Stage.REVEAL, sites)
    request = run.server.requests()[VICTIM]
    fps = list(request[messages.COMMITTED_FPS])
    fps[2] = fps[1]
    with pytest.raises(CoordinatorMisbehaviourError, match="more than one node id"):
        _victim_answers(run, {**request, messages.COMMITTED_FPS: fps})

    run = _paused(n, Stage.SHARE_KEYS, sites)
    request = run.server.requests()[VICTIM]
    colluder = request[messages.PEER_IDS][0]
    cert = request[messages.PEER_CERT][0]
    _forge_round_keys(request, 1, cert, sites[colluder].sign)
    with pytest.raises(CoordinatorMisbehaviourError, match="not the identity committed for it"):
        _victim_answers(run, request)


@pytest.mark.parametrize("n", SIZES)
def test_survivor_signatures_count_only_from_distinct_certified_sites(n):
    """The consistency check: the coordinator keeps t - 1 honest signatures of the survivors
    (the victim's own included) and makes up the rest, each over its signer's closed
    neighbourhood and the committed set's digest, with round keys of its own CA's sites, or
    with one colluding site's identity under every other signer's node id. Neither reaches
    the threshold."""
    sites = ephemeral_federation(range(n))
    run = _paused(n, Stage.UNMASK, sites)
    request = run.server.requests()[VICTIM]
    t = run.server.config.threshold
    survivors = request[messages.SURVIVORS]
    state = run.states[VICTIM]
    closed = closed_neighbourhoods(state["segment"])

    def signed(signer):
        return messages.survivors_message(
            run.server.round_id, state["directory"], signer, closed[signer], survivors
        )

    real = dict(zip(request[messages.SIGNER_IDS], request[messages.SIGNATURES], strict=True))
    assert VICTIM not in real and set(real) <= set(state["graph_peers"])
    kept = [s for s in real if s != VICTIM][: t - 2]  # and the victim's own signature
    made_up = [s for s in survivors if s in state["graph_peers"] and s not in kept]
    assert len(kept) + 1 == t - 1 and len(made_up) >= 1
    own_ca = ephemeral_federation(made_up)
    colluder = [VICTIM, *kept][-1]
    for vouch in ("another CA", "one colluder"):
        columns = {k: [] for k in _SIGNER_KEYS}
        for signer in kept:
            entry = run.server.signers_payload({signer: real[signer]})
            for key in _SIGNER_KEYS:
                columns[key] += entry[key]
        for signer in made_up:
            sig_sk, sig_pk = crypto.ed25519_keypair()
            site = own_ca[signer] if vouch == "another CA" else sites[colluder]
            columns[messages.SIGNER_IDS].append(signer)
            columns[messages.SIGNATURES].append(crypto.sign(sig_sk, signed(signer)))
            columns[messages.SIGNER_SIG_PKS].append(sig_pk)
            columns[messages.SIGNER_CERTS].append(site.cert)
            columns[messages.SIGNER_ID_SIGS].append(
                site.sign(messages.identity_message(run.server.round_id, signer, sig_pk))
            )
        with pytest.raises(
            CoordinatorMisbehaviourError, match=f"only {t - 1} certified signatures"
        ):
            _victim_answers(run, {**request, **columns})
    assert isinstance(_victim_answers(run, request), dict)  # the honest request is answered


_SIGNER_KEYS = (
    messages.SIGNER_IDS,
    messages.SIGNATURES,
    messages.SIGNER_SIG_PKS,
    messages.SIGNER_CERTS,
    messages.SIGNER_ID_SIGS,
)


def test_identity_files_that_do_not_fit_are_refused_naming_the_file(tmp_path):
    made = make_credentials(tmp_path / "fed", sites=["a", "b"])
    other = make_credentials(tmp_path / "other", sites=["a"])
    (key_a, _), (key_b, _) = made.site_keys["a"], made.site_keys["b"]
    cert_a = made.site_certs["a"]
    identity = SiteIdentity.from_files(key_a, cert_a, made.ca_cert)
    assert (
        identity.fingerprint
        != SiteIdentity.from_files(key_b, made.site_certs["b"], made.ca_cert).fingerprint
    )
    with pytest.raises(FedVLMError, match=f"secagg-identity-cert: cannot read {tmp_path}"):
        SiteIdentity.from_files(key_a, tmp_path / "missing.crt", made.ca_cert)
    with pytest.raises(FedVLMError, match=f"{other.site_certs['a']}.*not issued by"):
        SiteIdentity.from_files(key_a, other.site_certs["a"], made.ca_cert)
    with pytest.raises(FedVLMError, match=f"secagg-identity-key: {key_b} is not the key"):
        SiteIdentity.from_files(key_b, cert_a, made.ca_cert)
    # The coordinator holds server.key, under the same CA: never a site's identity.
    with pytest.raises(FedVLMError, match="the SuperLink's cannot vouch"):
        SiteIdentity.from_files(made.server_key, made.server_cert, made.ca_cert)


def test_simulated_sites_share_one_ca_made_on_the_fly(tmp_path):
    folder = tmp_path / "run" / "secagg-identities"
    a, b = simulation_identity(folder, "site-0"), simulation_identity(folder, "site-1")
    assert a.ca == b.ca and a.fingerprint != b.fingerprint
    assert simulation_identity(folder, "site-0").fingerprint == a.fingerprint  # kept
    assert (folder / "site-0.key").stat().st_mode & 0o077 == 0
