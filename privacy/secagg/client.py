"""The client side of SecAgg+: one method per stage, state that fits a Flower ConfigRecord.

A Flower ClientApp process does not survive between messages, so the client is rebuilt from
``context.state`` for every stage (``SecAggClient.from_state``) and saved back
(``to_state``). Every request of the coordinator is checked before anything secret leaves:
the neighbourhood must match the public graph, peers' round keys must be signed by a site the
federation's CA certified (``identity``), each identity standing for one node id only, the
survivors in the client's neighbourhood must be the ones it signed and that a threshold of its
certified neighbourhood signed too (under the committed set's digest), and no peer may ever be
asked for both its self-mask share and its pairwise-key share. Past setup (the reveal and
share-keys stages carry the O(n) committed set and reveals) nothing a client receives or checks
at the consistency and unmask stages grows with the number of clients: only its neighbours'
entries (O(k)).
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from . import crypto, identity, messages, shamir
from .config import SecAggConfig
from .errors import (
    AuthenticationError,
    CoordinatorMisbehaviourError,
    MalformedPayloadError,
    RoundFailedError,
)
from .graph import Ring, closed_neighbourhoods, committed_digest, graph_seed, seed_commitment
from .identity import SiteIdentity
from .masking import commit_self_mask, pair_mask_key, self_mask_key
from .messages import Payload, Stage
from .quantize import quantize

logger = logging.getLogger(__name__)

ROUND_ID_BYTES = 16
_SHARE_BYTES = 48  # a 32-byte secret is three field elements of 16 bytes


def share_point(client_id: int) -> int:
    """Return the Shamir evaluation point of the shares a client holds (never 0)."""
    return client_id + 1


@dataclass
class SecAggClient:
    """One client's secrets and view of the round; every field is a ConfigRecord value."""

    config: SecAggConfig
    round_id: bytes
    client_id: int
    next_stage: str
    c_sk: bytes
    s_sk: bytes
    sig_sk: bytes
    sig_pk: bytes
    b_seed: bytes
    ca: bytes  # the federation's CA certificate (DER), from this site's own files
    fingerprint: bytes  # this site's certified identity
    g_seed: bytes  # this site's share of the graph seed, revealed once the set is committed
    directory: bytes = b""  # digest of the committed set (graph.committed_digest)
    sampled: list[int] = field(default_factory=list)  # the ring's vertices, sorted
    graph_peers: list[int] = field(default_factory=list)
    segment: list[int] = field(default_factory=list)  # my ring segment (Ring.segment)
    participants: list[int] = field(default_factory=list)  # the committed set's node ids
    participant_fps: list[bytes] = field(default_factory=list)  # and identities
    participant_commits: list[bytes] = field(default_factory=list)  # and seed commitments
    peer_ids: list[int] = field(default_factory=list)
    peer_c_pk: list[bytes] = field(default_factory=list)
    peer_s_pk: list[bytes] = field(default_factory=list)
    share_src: list[int] = field(default_factory=list)
    share_b: list[bytes] = field(default_factory=list)
    share_sk: list[bytes] = field(default_factory=list)
    masked_with: list[int] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)

    # ----------------------------------------------------------------- state
    def to_state(self) -> dict[str, Any]:
        """Return the client's state as ConfigRecord-compatible values (keeps secrets!).

        The dict must stay on the node (``context.state``): it holds private keys.
        """
        state: dict[str, Any] = dict(self.config.to_dict())
        for f in fields(self):
            if f.name != "config":
                state[f.name] = getattr(self, f.name)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SecAggClient:
        """Rebuild a client saved with ``to_state`` (lists may come back as any sequence)."""
        kwargs: dict[str, Any] = {"config": SecAggConfig.from_dict(state)}
        for f in fields(cls):
            if f.name == "config":
                continue
            if f.name not in state:
                raise MalformedPayloadError(f"saved secure-aggregation state misses '{f.name}'")
            value = state[f.name]
            kwargs[f.name] = list(value) if isinstance(value, list | tuple) else value
        return cls(**kwargs)

    # ---------------------------------------------------------------- stages
    @classmethod
    def setup(cls, payload: Payload, site: SiteIdentity) -> tuple[SecAggClient, Payload]:
        """Start a round: check the config, draw fresh keys, reply with signed public keys.

        The round signing key is signed with the site's long-term key and sent with its
        certificate, so peers can tell it from one the coordinator made up.
        """
        who = "coordinator (setup)"
        messages.check_stage(payload, Stage.SETUP, None, who)
        round_id = messages.get(payload, messages.ROUND, bytes, who)
        if len(round_id) != ROUND_ID_BYTES:
            raise MalformedPayloadError(f"{who}: round id must be {ROUND_ID_BYTES} bytes")
        client_id = messages.get(payload, messages.CLIENT_ID, int, who)
        config = SecAggConfig.from_dict(payload)
        sampled = messages.get(payload, messages.SAMPLED, list[int], who)
        if sampled != sorted(set(sampled)) or client_id not in sampled:
            raise MalformedPayloadError(f"{who}: the sampled ids are not sorted, unique, with me")
        if len(sampled) > config.num_clients:
            raise MalformedPayloadError(
                f"{who}: {len(sampled)} sampled clients exceed the configured maximum"
            )
        c_sk, c_pk = crypto.x25519_keypair()
        s_sk, s_pk = crypto.x25519_keypair()
        sig_sk, sig_pk = crypto.ed25519_keypair()
        b_seed = crypto.random_seed()
        client = cls(
            config,
            round_id,
            client_id,
            Stage.SHARE_KEYS.value,
            c_sk,
            s_sk,
            sig_sk,
            sig_pk,
            b_seed,
            site.ca,
            site.fingerprint,
            crypto.random_seed(),
        )
        commit = client._b_commit()
        client.sampled = sampled
        client.next_stage = Stage.REVEAL.value
        reply = {
            messages.STAGE: Stage.SETUP.value,
            messages.ROUND: round_id,
            messages.C_PK: c_pk,
            messages.S_PK: s_pk,
            messages.SIG_PK: sig_pk,
            messages.ID_CERT: site.cert,
            messages.ID_SIG: site.sign(messages.identity_message(round_id, client_id, sig_pk)),
            messages.B_COMMIT: commit,
            messages.SEED_COMMIT: seed_commitment(round_id, client_id, client.g_seed),
            messages.SIG: crypto.sign(
                sig_sk, messages.bundle_message(round_id, client_id, c_pk, s_pk, commit)
            ),
        }
        return client, reply

    def handle(
        self, payload: Payload, update: np.ndarray | None = None, weight: int = 1
    ) -> Payload:
        """Answer any stage after setup; ``update`` and ``weight`` feed the masked-input stage."""
        stage = payload.get(messages.STAGE)
        if stage == Stage.REVEAL:
            return self.reveal(payload)
        if stage == Stage.SHARE_KEYS:
            return self.share_keys(payload)
        if stage == Stage.MASKED_INPUT:
            if update is None:
                raise ValueError("the masked-input stage needs the client's update")
            return self.masked_input(payload, update, weight)
        if stage == Stage.CONSISTENCY:
            return self.consistency(payload)
        if stage == Stage.UNMASK:
            return self.unmask(payload)
        raise MalformedPayloadError(f"coordinator: unknown or out-of-place stage {stage!r}")

    def reveal(self, payload: Payload) -> Payload:
        """Check the committed set, keep its digest, and only then reveal my graph seed."""
        who = self._enter(payload, Stage.REVEAL)
        ids = messages.get(payload, messages.COMMITTED, list[int], who)
        fps = messages.get(payload, messages.COMMITTED_FPS, list[bytes], who)
        commits = messages.get(payload, messages.COMMITTED_SEEDS, list[bytes], who)
        if not len(ids) == len(fps) == len(commits) or ids != sorted(set(ids)):
            raise MalformedPayloadError(f"{who}: the committed set is not sorted, unique, aligned")
        if len(set(fps)) != len(fps):
            self._refuse("a certified site stands for more than one node id in the committed set")
        if strangers := set(ids) - set(self.sampled):
            self._refuse(f"committed sites {sorted(strangers)} were not sampled at setup")
        mine = seed_commitment(self.round_id, self.client_id, self.g_seed)
        entries = dict(zip(ids, zip(fps, commits, strict=True), strict=True))
        if entries.get(self.client_id) != (self.fingerprint, mine):
            self._refuse("the committed set leaves me out or misstates my identity or commitment")
        if len(ids) > self.config.num_clients:
            self._refuse(f"{len(ids)} committed sites exceed the configured maximum")
        if len(ids) <= self.config.threshold:
            raise RoundFailedError(
                f"{who}: {len(ids)} committed sites cannot reach threshold "
                f"{self.config.threshold} of shares"
            )
        self.participants, self.participant_fps, self.participant_commits = ids, fps, commits
        self.directory = committed_digest(self.round_id, self.sampled, ids, fps, commits)
        self.next_stage = Stage.SHARE_KEYS.value
        return self._reply(Stage.REVEAL, {messages.SEED: self.g_seed})

    def share_keys(self, payload: Payload) -> Payload:
        """Check the reveals, draw the graph, check the neighbours' certified keys, then send
        each neighbour encrypted shares.

        The ring runs over the sampled ids (``graph``): my neighbours that never committed are
        missing vertices. With fewer than t committed neighbours my secrets could never be
        rebuilt, and whoever silenced the others would face mostly its own colluders: I stop
        before drawing a single share.
        """
        who = self._enter(payload, Stage.SHARE_KEYS)
        reveals = messages.get(payload, messages.REVEALS, list[bytes], who)
        if len(reveals) != len(self.participants):
            raise RoundFailedError(f"{who}: a committed site did not reveal its graph seed")
        for cid, commit, reveal in zip(
            self.participants, self.participant_commits, reveals, strict=True
        ):
            if seed_commitment(self.round_id, cid, reveal) != commit:
                self._refuse(f"the graph seed revealed for client {cid} is not the committed one")
        seed = graph_seed(self.directory, reveals)
        ring = Ring(self.sampled, self.config.degree, seed)
        self.graph_peers = [
            p for p in ring.neighbours(self.client_id) if self._committed_at(p) is not None
        ]
        self.segment = ring.segment(self.client_id)
        if len(self.graph_peers) < self.config.threshold:
            raise RoundFailedError(
                f"{who}: only {len(self.graph_peers)} of my neighbours in the sampled ring "
                f"committed, fewer than the threshold {self.config.threshold}: my input could "
                "not stay hidden"
            )
        peer_ids = messages.get(payload, messages.PEER_IDS, list[int], who)
        if peer_ids != self.graph_peers:
            self._refuse("the neighbours sent are not my neighbours in the round's public graph")
        keys = (
            messages.PEER_C_PK,
            messages.PEER_S_PK,
            messages.PEER_B_COMMIT,
            messages.PEER_SIG,
            messages.PEER_SIG_PK,
            messages.PEER_CERT,
            messages.PEER_ID_SIG,
        )
        columns = [messages.get(payload, key, list[bytes], who) for key in keys]
        if any(len(column) != len(peer_ids) for column in columns):
            raise MalformedPayloadError(f"{who}: peer key lists differ in length")
        for peer, c_pk, s_pk, commit, sig, sig_pk, cert, id_sig in zip(
            peer_ids, *columns, strict=True
        ):
            self._certified(peer, sig_pk, cert, id_sig, who)
            signed = messages.bundle_message(self.round_id, peer, c_pk, s_pk, commit)
            if not crypto.verify(sig_pk, sig, signed):
                raise AuthenticationError(f"{who}: the public keys of client {peer} are not signed")
        self.peer_ids, self.peer_c_pk, self.peer_s_pk = peer_ids, columns[0], columns[1]
        points = [share_point(p) for p in peer_ids]
        b_shares = shamir.split(self.b_seed, points, self.config.threshold)
        sk_shares = shamir.split(self.s_sk, points, self.config.threshold)
        ciphertexts = [
            crypto.encrypt(
                self._enc_key(peer),
                messages.id_bytes(self.client_id, peer) + b_share + sk_share,
                messages.share_aad(self.round_id, self.client_id, peer),
            )
            for peer, b_share, sk_share in zip(peer_ids, b_shares, sk_shares, strict=True)
        ]
        self.next_stage = Stage.MASKED_INPUT.value
        body = {messages.DST_IDS: peer_ids, messages.CIPHERTEXTS: ciphertexts}
        return self._reply(Stage.SHARE_KEYS, body)

    def masked_input(self, payload: Payload, update: np.ndarray, weight: int) -> Payload:
        """Store the shares meant for me and send the quantised update under all masks."""
        who = self._enter(payload, Stage.MASKED_INPUT)
        length = messages.get(payload, messages.LENGTH, int, who)
        update = np.asarray(update).ravel()
        if update.size != length:
            raise MalformedPayloadError(
                f"{who}: my update has {update.size} values but the round expects {length}"
            )
        src_ids = messages.get(payload, messages.SRC_IDS, list[int], who)
        cts = messages.get(payload, messages.CIPHERTEXTS, list[bytes], who)
        if len(src_ids) != len(cts) or len(set(src_ids)) != len(src_ids):
            raise MalformedPayloadError(f"{who}: senders and ciphertexts do not match")
        if strangers := set(src_ids) - set(self.peer_ids):
            self._refuse(f"shares from non-neighbours {sorted(strangers)}")
        if len(src_ids) < self.config.threshold:
            raise RoundFailedError(
                f"{who}: only {len(src_ids)} neighbours are left, fewer than the threshold "
                f"{self.config.threshold}: my input could not stay hidden"
            )
        for src, ct in zip(src_ids, cts, strict=True):
            plain = crypto.decrypt(
                self._enc_key(src),
                ct,
                messages.share_aad(self.round_id, src, self.client_id),
                f"{who}: shares from client {src}",
            )
            if len(plain) != 16 + 2 * _SHARE_BYTES or plain[:16] != messages.id_bytes(
                src, self.client_id
            ):
                raise AuthenticationError(f"{who}: shares from client {src} are mislabelled")
            self.share_src.append(src)
            self.share_b.append(plain[16 : 16 + _SHARE_BYTES])
            self.share_sk.append(plain[16 + _SHARE_BYTES :])
        masked = quantize(update, weight, self.config)
        masked += crypto.expand_mask(self._self_mask_key(), masked.size, masked.dtype)
        for src in src_ids:
            mask = crypto.expand_mask(self._pair_mask_key(src), masked.size, masked.dtype)
            if self.client_id < src:
                masked += mask
            else:
                masked -= mask
        self.masked_with = sorted(src_ids)
        self.next_stage = Stage.CONSISTENCY.value
        return self._reply(Stage.MASKED_INPUT, {messages.MASKED: masked})

    def consistency(self, payload: Payload) -> Payload:
        """Sign who in my closed neighbourhood survived, after checking it agrees with what I know.

        The coordinator sends the survivors among my ring segment (my neighbours' closed
        neighbourhoods, O(k) ids); ids beyond it are ignored, as they hold none of the shares I
        hold or reveal (see ``_check_signatures``).
        """
        who = self._enter(payload, Stage.CONSISTENCY)
        survivors = messages.get(payload, messages.SURVIVORS, list[int], who)
        if len(set(survivors)) != len(survivors):
            raise MalformedPayloadError(f"{who}: the survivor set repeats clients")
        view = self._local(survivors)
        if self.client_id not in view:
            self._refuse("the survivor set leaves me out although I sent my input")
        if outsiders := [s for s in survivors if self._committed_at(s) is None]:
            self._refuse(f"survivors {sorted(outsiders)} never took part in the round")
        # A neighbour that never completed setup never sent me shares either: caught here too.
        if ghosts := (set(view) & set(self.graph_peers)) - set(self.masked_with):
            self._refuse(f"neighbours {sorted(ghosts)} 'survived' without sending me shares")
        mine = set(view) & set(closed_neighbourhoods(self.segment)[self.client_id])
        if len(mine) < self.config.threshold:
            raise RoundFailedError(
                f"{who}: {len(mine)} survivors in my neighbourhood (me included) are fewer than "
                f"the threshold {self.config.threshold}: my self-mask seed cannot be rebuilt"
            )
        self.survivors = view
        self.next_stage = Stage.UNMASK.value
        signature = crypto.sign(self.sig_sk, self.consistency_message(view))
        return self._reply(Stage.CONSISTENCY, {messages.SIG: signature})

    def consistency_message(self, survivors: list[int]) -> bytes:
        """Return the bytes I sign for ``survivors``: who in my closed neighbourhood survived."""
        mine = closed_neighbourhoods(self.segment)[self.client_id]
        return messages.survivors_message(
            self.round_id, self.directory, self.client_id, mine, survivors
        )

    def unmask(self, payload: Payload) -> Payload:
        """Reveal self-mask shares of survivors and pairwise-key shares of dropped peers."""
        who = self._enter(payload, Stage.UNMASK)
        survivors = messages.get(payload, messages.SURVIVORS, list[int], who)
        if self._local(survivors) != self.survivors:
            self._refuse("the survivor set differs from the one I signed")
        self._check_signatures(payload, who)
        alive = messages.get(payload, messages.ALIVE, list[int], who)
        dead = messages.get(payload, messages.DEAD, list[int], who)
        if both := set(alive) & set(dead):
            self._refuse(f"it lists clients {sorted(both)} as both dropped and surviving")
        if fake := set(alive) - set(self.survivors):
            self._refuse(f"it asks self-mask shares of {sorted(fake)}, not in the signed survivors")
        if fake := set(dead) & set(self.survivors):
            self._refuse(f"it asks pairwise-key shares of signed survivors {sorted(fake)}")
        held = dict(zip(self.share_src, zip(self.share_b, self.share_sk, strict=True), strict=True))
        if unknown := (set(alive) | set(dead)) - set(held):
            raise MalformedPayloadError(f"{who}: I hold no shares of clients {sorted(unknown)}")
        return self._reply(
            Stage.UNMASK,
            {
                messages.ALIVE: alive,
                messages.B_SHARES: [held[c][0] for c in alive],
                messages.DEAD: dead,
                messages.SK_SHARES: [held[c][1] for c in dead],
            },
        )

    # --------------------------------------------------------------- helpers
    def _enter(self, payload: Payload, stage: Stage) -> str:
        who = f"coordinator ({stage})"
        if self.next_stage != stage.value:
            raise MalformedPayloadError(f"{who}: out of order, expected stage '{self.next_stage}'")
        messages.check_stage(payload, stage, self.round_id, who)
        return who

    def _refuse(self, reason: str) -> None:
        logger.warning("secagg client %s refuses the coordinator: %s", self.client_id, reason)
        raise CoordinatorMisbehaviourError(f"client {self.client_id} refuses: {reason}")

    def _local(self, survivors: list[int]) -> list[int]:
        return sorted(set(survivors) & set(self.segment))

    def _check_signatures(self, payload: Payload, who: str) -> None:
        """Refuse unless t certified sites of my closed neighbourhood (me included) signed what
        I signed.

        Each neighbour signs who survived in *its own* closed neighbourhood, under the committed
        set's digest, and I check its signature against my view of that neighbourhood (my ring
        segment covers it), so the coordinator sends me only my neighbours' signatures: O(k)
        bytes and checks, not O(n). Each signer comes with its round key, certificate and
        long-term signature of that key: a signature counts only if it chains to the CA under
        the identity committed for the signer's node id (so each certified site counts once).

        Why this is still sound: at unmasking I reveal shares of my neighbours' secrets only,
        one kind per neighbour, fixed by the view I signed. The attack to stop is a split view
        of some neighbour v (alive to some of v's share holders, dropped to others). A
        neighbour u of mine whose closed neighbourhood holds v signs v's status, so if u was
        told otherwise its signature does not count here: each honest share holder of v needs
        t of its own closed neighbourhood to back the status it was shown, on top of the
        2t - k colluders among v's neighbours that the derived threshold already denies. In the
        complete graph this is exactly the check of Bonawitz et al. 2017 (t signatures, mine
        included, of one survivor set). The earlier check over the whole survivor set counted
        any t survivors, which in a sparse graph are mostly clients that hold none of my
        neighbours' shares and know nothing of their status: it bound nothing more.
        """
        signer_ids = messages.get(payload, messages.SIGNER_IDS, list[int], who)
        keys = (
            messages.SIGNATURES,
            messages.SIGNER_SIG_PKS,
            messages.SIGNER_CERTS,
            messages.SIGNER_ID_SIGS,
        )
        columns = [messages.get(payload, key, list[bytes], who) for key in keys]
        if any(len(column) != len(signer_ids) for column in columns):
            raise MalformedPayloadError(f"{who}: signer lists differ in length")
        closed = closed_neighbourhoods(self.segment)
        certified: set[int] = set()
        for signer, sig, sig_pk, cert, id_sig in zip(signer_ids, *columns, strict=True):
            if signer not in self.survivors or signer not in self.graph_peers:
                continue
            signed = messages.survivors_message(
                self.round_id, self.directory, signer, closed[signer], self.survivors
            )
            if not crypto.verify(sig_pk, sig, signed):
                continue
            try:
                self._certified(signer, sig_pk, cert, id_sig, who)
            except (AuthenticationError, CoordinatorMisbehaviourError) as err:
                logger.warning("secagg client %s ignores a signature: %s", self.client_id, err)
                continue
            certified.add(signer)
        count = len(certified) + 1  # and my own signature of this view
        if count < self.config.threshold:
            self._refuse(
                f"only {count} certified signatures of the survivor set in my neighbourhood "
                f"(mine included), threshold is {self.config.threshold}"
            )

    def _certified(self, peer: int, sig_pk: bytes, cert: bytes, id_sig: bytes, who: str) -> None:
        """Check ``peer``'s round key is vouched for by the CA-certified site committed for it.

        The committed set lists each identity once (``reveal``), so one colluding site's key
        cannot stand for several node ids.
        """
        message = messages.identity_message(self.round_id, peer, sig_pk)
        site = identity.verify(self.ca, cert, id_sig, message, f"{who}: client {peer}")
        at = self._committed_at(peer)
        if at is None or site.fingerprint != self.participant_fps[at]:
            self._refuse(f"client {peer}'s certificate is not the identity committed for it")

    def _committed_at(self, peer: int) -> int | None:
        """Return ``peer``'s index in the committed set (its ids are sorted), or None."""
        at = bisect.bisect_left(self.participants, peer)
        return at if at < len(self.participants) and self.participants[at] == peer else None

    def _reply(self, stage: Stage, body: Payload) -> Payload:
        return {messages.STAGE: stage.value, messages.ROUND: self.round_id, **body}

    def _b_commit(self) -> bytes:
        return commit_self_mask(self.b_seed, self.round_id, self.client_id)

    def _self_mask_key(self) -> bytes:
        return self_mask_key(self.b_seed, self.round_id, self.client_id)

    def _peer(self, peer: int) -> int:
        return self.peer_ids.index(peer)

    def _enc_key(self, peer: int) -> bytes:
        lo, hi = sorted((self.client_id, peer))
        info = messages.info(b"share-encryption", self.round_id, lo, hi)
        return crypto.derive_key(self.c_sk, self.peer_c_pk[self._peer(peer)], info)

    def _pair_mask_key(self, peer: int) -> bytes:
        peer_s_pk = self.peer_s_pk[self._peer(peer)]
        return pair_mask_key(self.s_sk, peer_s_pk, self.round_id, self.client_id, peer)
