"""The coordinator side of SecAgg+: a transport-free state machine over the six stages.

Usage, whatever carries the messages::

    server = SecAggServer(config, client_ids, length)
    while not server.done:
        replies = send_and_collect(server.requests())   # {client id: payload}
        server.receive(replies)                         # missing ids count as dropped
    result = server.result()

A client that does not answer, or answers with a malformed or unauthenticated payload, is
dropped at that stage (the reason is kept in ``rejected``); the round goes on while every
needed secret still has ``threshold`` shares, and fails with RoundFailedError otherwise.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedvlm.errors import ConfigError

from . import crypto, messages, shamir
from .client import ROUND_ID_BYTES, share_point
from .config import KEYS, SecAggConfig
from .errors import AuthenticationError, MalformedPayloadError, RoundFailedError, SecAggError
from .graph import Ring, committed_digest, graph_seed, seed_commitment
from .identity import fingerprint_of
from .masking import commit_self_mask, pair_mask_key, self_mask_key
from .messages import Payload, Stage
from .quantize import dequantize

logger = logging.getLogger(__name__)

_SECRET_BYTES = crypto.KEY_BYTES
_SHARE_BYTES = len(shamir.split(bytes(_SECRET_BYTES), [1], 1)[0])
_MAX_SUBSETS = 256  # t-subsets tried per secret before the round is declared failed


@dataclass(frozen=True)
class SecAggResult:
    """What the coordinator learns: the weighted sum of the survivors' updates, nothing else.

    Attributes
    ----------
    weighted_sum : np.ndarray
        ``sum_i w_i * update_i`` over the survivors (float64, flat).
    total_weight : int
        ``sum_i w_i`` over the survivors.
    survivors : list of int
        Clients whose inputs are in the sum.
    dropped : dict
        Stage name -> clients that dropped (or were rejected) at that stage.
    rejected : dict
        Client id -> why its reply was refused.
    unmask_errors : list of str
        Share subsets that rebuilt a wrong secret (a neighbour sent a bad share); the round
        went on with another subset.
    """

    weighted_sum: np.ndarray
    total_weight: int
    survivors: list[int]
    dropped: dict[str, list[int]]
    rejected: dict[int, str] = field(default_factory=dict)
    unmask_errors: list[str] = field(default_factory=list)

    @property
    def mean(self) -> np.ndarray:
        """Return the weighted mean update."""
        if self.total_weight == 0:
            raise RoundFailedError("the survivors carry zero total weight")
        return self.weighted_sum / self.total_weight


@dataclass
class _Bundle:
    c_pk: bytes
    s_pk: bytes
    sig_pk: bytes
    commit: bytes
    sig: bytes
    cert: bytes  # the site's certificate and its long-term signature of ``sig_pk``:
    id_sig: bytes  # relayed to its peers, who check them against their own CA
    seed_commit: bytes  # commitment to its share of the graph seed


class SecAggServer:
    """Drive one round of SecAgg+ over ``client_ids`` for updates of ``length`` values.

    Parameters
    ----------
    config : SecAggConfig
        Shared parameters; ``config.num_clients`` must cover ``client_ids``.
    client_ids : list of int
        Distinct ids below 2^64 (Flower node ids work as they are).
    length : int
        Number of values in each client's flat update.
    round_id : bytes, optional
        16 public random bytes naming the round (drawn fresh when omitted).
    """

    def __init__(
        self,
        config: SecAggConfig,
        client_ids: list[int],
        length: int,
        *,
        round_id: bytes | None = None,
    ) -> None:
        ids = sorted(client_ids)
        if len(set(ids)) != len(ids) or not all(0 <= c < 1 << 64 for c in ids):
            raise ValueError("client ids must be distinct integers in [0, 2^64)")
        if len(ids) > config.num_clients:
            raise ConfigError(
                KEYS["num_clients"],
                f"{len(ids)} clients sampled but the modulus is sized for {config.num_clients}",
            )
        if length < 1:
            raise ValueError("updates must hold at least one value")
        self.config = config
        self.length = length
        self.round_id = round_id or os.urandom(ROUND_ID_BYTES)
        self.stage: Stage | None = Stage.SETUP
        self.active = ids
        self.sampled = list(ids)
        self._directory = b""  # digest of the committed set, once fixed
        self._committed: Payload = {}  # the committed set, as sent at the reveal stage
        self._reveals: dict[int, bytes] = {}
        # Drawn once every committed site revealed: dropped clients are later missing vertices.
        self._ring: Ring | None = None
        self._full_graph: dict[int, list[int]] = {}
        self.dropped: dict[str, list[int]] = {s.value: [] for s in Stage}
        self.rejected: dict[int, str] = {}
        self.unmask_errors: list[str] = []
        self._bundles: dict[int, _Bundle] = {}
        self._graph: dict[int, list[int]] = {}
        self._u2: set[int] = set()
        self._mailbox: dict[int, dict[int, bytes]] = {}
        self._survivors: list[int] = []
        self._survivor_set: set[int] = set()
        self._total: np.ndarray | None = None
        self._signatures: dict[int, bytes] = {}
        self._requested: dict[int, tuple[list[int], list[int]]] = {}
        self._b_shares: dict[int, list[tuple[int, bytes]]] = {}
        self._sk_shares: dict[int, list[tuple[int, bytes]]] = {}
        self._result: SecAggResult | None = None

    @property
    def done(self) -> bool:
        """Return whether the round has finished (``result()`` is ready)."""
        return self.stage is None

    # -------------------------------------------------------------- requests
    def requests(self) -> dict[int, Payload]:
        """Return the payload to send each active client at the current stage."""
        if self.stage is None:
            return {}
        build = {
            Stage.SETUP: self._setup_request,
            Stage.REVEAL: self._reveal_request,
            Stage.SHARE_KEYS: self._share_keys_request,
            Stage.MASKED_INPUT: self._masked_input_request,
            Stage.CONSISTENCY: self._consistency_request,
            Stage.UNMASK: self._unmask_request,
        }[self.stage]
        header = {messages.STAGE: self.stage.value, messages.ROUND: self.round_id}
        return {c: {**header, **build(c)} for c in self.active}

    def _setup_request(self, cid: int) -> Payload:
        return {messages.CLIENT_ID: cid, messages.SAMPLED: self.sampled, **self.config.to_dict()}

    def _reveal_request(self, cid: int) -> Payload:
        return dict(self._committed)

    def _share_keys_request(self, cid: int) -> Payload:
        # Only the neighbours' entries: each carries a certificate and two signatures.
        peers = self._graph[cid]
        bundles = [self._bundles[p] for p in peers]
        return {
            messages.REVEALS: [self._reveals[c] for c in self.active],
            messages.PEER_IDS: peers,
            messages.PEER_C_PK: [b.c_pk for b in bundles],
            messages.PEER_S_PK: [b.s_pk for b in bundles],
            messages.PEER_B_COMMIT: [b.commit for b in bundles],
            messages.PEER_SIG: [b.sig for b in bundles],
            messages.PEER_SIG_PK: [b.sig_pk for b in bundles],
            messages.PEER_CERT: [b.cert for b in bundles],
            messages.PEER_ID_SIG: [b.id_sig for b in bundles],
        }

    def _masked_input_request(self, cid: int) -> Payload:
        box = self._mailbox.get(cid, {})
        src = [p for p in self._graph[cid] if p in self._u2 and p in box]
        return {
            messages.LENGTH: self.length,
            messages.SRC_IDS: src,
            messages.CIPHERTEXTS: [box[p] for p in src],
        }

    def _local_survivors(self, cid: int) -> list[int]:
        """The survivors a client checks and signs: those in its ring segment (O(k))."""
        assert self._ring is not None
        return sorted(set(self._ring.segment(cid)) & self._survivor_set)

    def _closed_neighbourhood(self, cid: int) -> list[int]:
        return sorted([cid, *self._full_graph[cid]])

    def _consistency_request(self, cid: int) -> Payload:
        return {messages.SURVIVORS: self._local_survivors(cid)}

    def _unmask_request(self, cid: int) -> Payload:
        held = [p for p in self._graph[cid] if p in self._u2]
        alive = [p for p in held if p in self._survivor_set]
        dead = [p for p in held if p not in self._survivor_set]
        self._requested[cid] = (alive, dead)
        local = {s: self._signatures[s] for s in self._full_graph[cid] if s in self._signatures}
        return {
            messages.SURVIVORS: self._local_survivors(cid),
            **self.signers_payload(local),
            messages.ALIVE: alive,
            messages.DEAD: dead,
        }

    def signers_payload(self, signatures: dict[int, bytes]) -> Payload:
        """Return the survivor-set signatures with what certifies each signer's round key.

        A site counts a signature only with the signer's round key, certificate and
        long-term signature of that key (``SecAggClient._check_signatures``).
        """
        signers = sorted(signatures)
        bundles = [self._bundles[s] for s in signers]
        return {
            messages.SIGNER_IDS: signers,
            messages.SIGNATURES: [signatures[s] for s in signers],
            messages.SIGNER_SIG_PKS: [b.sig_pk for b in bundles],
            messages.SIGNER_CERTS: [b.cert for b in bundles],
            messages.SIGNER_ID_SIGS: [b.id_sig for b in bundles],
        }

    # --------------------------------------------------------------- replies
    def receive(self, replies: dict[int, Payload]) -> None:
        """Consume the replies of the current stage and move to the next one.

        Clients absent from ``replies``, or whose reply fails validation, are dropped.
        """
        if self.stage is None:
            raise SecAggError("the round is over")
        stage = self.stage
        check = {
            Stage.SETUP: self._check_setup,
            Stage.REVEAL: self._check_reveal,
            Stage.SHARE_KEYS: self._check_share_keys,
            Stage.MASKED_INPUT: self._check_masked_input,
            Stage.CONSISTENCY: self._check_consistency,
            Stage.UNMASK: self._check_unmask,
        }[stage]
        kept = []
        for cid in self.active:
            reply = replies.get(cid)
            if reply is None:
                self.dropped[stage.value].append(cid)
                continue
            who = f"client {cid} ({stage})"
            try:
                messages.check_stage(reply, stage, self.round_id, who)
                check(cid, reply, who)
            except SecAggError as err:
                logger.warning("secagg: dropping %s", err)
                self.rejected[cid] = str(err)
                self.dropped[stage.value].append(cid)
                continue
            kept.append(cid)
        self.active = kept
        advance = {
            Stage.SETUP: self._after_setup,
            Stage.REVEAL: self._after_reveal,
            Stage.SHARE_KEYS: self._after_share_keys,
            Stage.MASKED_INPUT: self._after_masked_input,
            Stage.CONSISTENCY: self._after_consistency,
            Stage.UNMASK: self._after_unmask,
        }[stage]
        advance()

    def _check_setup(self, cid: int, reply: Payload, who: str) -> None:
        keys = (
            messages.C_PK,
            messages.S_PK,
            messages.SIG_PK,
            messages.B_COMMIT,
            messages.SIG,
            messages.ID_CERT,
            messages.ID_SIG,
            messages.SEED_COMMIT,
        )
        bundle = _Bundle(*(messages.get(reply, k, bytes, who) for k in keys))
        signed = messages.bundle_message(
            self.round_id, cid, bundle.c_pk, bundle.s_pk, bundle.commit
        )
        if not crypto.verify(bundle.sig_pk, bundle.sig, signed):
            raise AuthenticationError(f"{who}: key bundle signature does not verify")
        fingerprint_of(bundle.cert)  # a malformed certificate drops its sender here
        self._bundles[cid] = bundle

    def _after_setup(self) -> None:
        self._require(len(self.active) > self.config.threshold, "completed setup")
        bundles = [self._bundles[c] for c in self.active]
        fps = [fingerprint_of(b.cert) for b in bundles]
        commits = [b.seed_commit for b in bundles]
        self._directory = committed_digest(self.round_id, self.sampled, self.active, fps, commits)
        self._committed = {
            messages.COMMITTED: list(self.active),
            messages.COMMITTED_FPS: fps,
            messages.COMMITTED_SEEDS: commits,
        }
        self.stage = Stage.REVEAL

    def _check_reveal(self, cid: int, reply: Payload, who: str) -> None:
        seed = messages.get(reply, messages.SEED, bytes, who)
        if seed_commitment(self.round_id, cid, seed) != self._bundles[cid].seed_commit:
            raise AuthenticationError(f"{who}: the graph seed revealed is not the committed one")
        self._reveals[cid] = seed

    def _after_reveal(self) -> None:
        """Draw the graph from every committed site's seed, or abort the round.

        Going on without a missing reveal would let a coordinator drop reveals until it
        liked the graph; the abort reaches the ledger through RoundFailedError.
        """
        if missing := sorted(set(self._committed[messages.COMMITTED]) - set(self.active)):
            self.stage = None
            raise RoundFailedError(
                f"committed sites {missing} did not reveal their graph seed: the round is "
                "aborted, since the graph may not be drawn without them (sites refuse after "
                "secagg-max-aborts such rounds in a row)"
            )
        seed = graph_seed(self._directory, [self._reveals[c] for c in self.active])
        # Over the sampled ids, as the clients draw it: one that never committed is a missing
        # vertex (``graph``). Closed neighbourhoods, which clients sign, keep those vertices.
        self._ring = Ring(self.sampled, self.config.degree, seed)
        self._full_graph = {c: self._ring.neighbours(c) for c in self.active}
        committed = set(self.active)
        self._graph = {
            c: [p for p in peers if p in committed] for c, peers in self._full_graph.items()
        }
        self.stage = Stage.SHARE_KEYS

    def _check_share_keys(self, cid: int, reply: Payload, who: str) -> None:
        dst = messages.get(reply, messages.DST_IDS, list[int], who)
        cts = messages.get(reply, messages.CIPHERTEXTS, list[bytes], who)
        if dst != self._graph[cid] or len(cts) != len(dst):
            raise MalformedPayloadError(f"{who}: shares are not addressed to its neighbours")
        for peer, ct in zip(dst, cts, strict=True):
            self._mailbox.setdefault(peer, {})[cid] = ct

    def _after_share_keys(self) -> None:
        self._u2 = set(self.active)
        self._require(len(self.active) >= self.config.threshold, "shared their keys")
        self.stage = Stage.MASKED_INPUT

    def _check_masked_input(self, cid: int, reply: Payload, who: str) -> None:
        masked = messages.get(reply, messages.MASKED, np.ndarray, who)
        expected = (self.length + 1,)
        if masked.shape != expected or masked.dtype != self.config.dtype:
            raise MalformedPayloadError(
                f"{who}: masked vector is {masked.dtype}{list(masked.shape)}, expected "
                f"{self.config.dtype}{list(expected)}"
            )
        if self._total is None:
            self._total = masked.copy()
        else:
            self._total += masked

    def _after_masked_input(self) -> None:
        self._survivors = list(self.active)
        self._survivor_set = set(self._survivors)
        self._require(len(self._survivors) >= self.config.threshold, "sent masked inputs")
        self.stage = Stage.CONSISTENCY

    def _check_consistency(self, cid: int, reply: Payload, who: str) -> None:
        sig = messages.get(reply, messages.SIG, bytes, who)
        signed = messages.survivors_message(
            self.round_id, self._directory, cid, self._closed_neighbourhood(cid), self._survivors
        )
        if not crypto.verify(self._bundles[cid].sig_pk, sig, signed):
            raise AuthenticationError(f"{who}: signature of the survivor set does not verify")
        self._signatures[cid] = sig

    def _after_consistency(self) -> None:
        self._require(len(self._signatures) >= self.config.threshold, "signed the survivor set")
        self.stage = Stage.UNMASK

    def _check_unmask(self, cid: int, reply: Payload, who: str) -> None:
        alive, dead = self._requested[cid]
        if (
            messages.get(reply, messages.ALIVE, list[int], who) != alive
            or messages.get(reply, messages.DEAD, list[int], who) != dead
        ):
            raise MalformedPayloadError(f"{who}: answered other peers than requested")
        b_shares = messages.get(reply, messages.B_SHARES, list[bytes], who)
        sk_shares = messages.get(reply, messages.SK_SHARES, list[bytes], who)
        if len(b_shares) != len(alive) or len(sk_shares) != len(dead):
            raise MalformedPayloadError(f"{who}: share lists do not match the requests")
        # A short or long share would make shamir.combine raise mid-unmask and abort the round
        # for everyone; refusing it here drops only its sender.
        if any(len(s) != _SHARE_BYTES for s in [*b_shares, *sk_shares]):
            raise MalformedPayloadError(f"{who}: a share is not {_SHARE_BYTES} bytes long")
        point = share_point(cid)
        for peer, share in zip(alive, b_shares, strict=True):
            self._b_shares.setdefault(peer, []).append((point, share))
        for peer, share in zip(dead, sk_shares, strict=True):
            self._sk_shares.setdefault(peer, []).append((point, share))

    def _after_unmask(self) -> None:
        assert self._total is not None
        total = self._total
        dtype = total.dtype
        for u in self._survivors:
            commit = self._bundles[u].commit
            b_seed = self._rebuild(
                u,
                self._b_shares,
                "self-mask seed",
                lambda seed, u=u, commit=commit: commit_self_mask(seed, self.round_id, u) == commit,
            )
            total -= crypto.expand_mask(self_mask_key(b_seed, self.round_id, u), total.size, dtype)
        for v in sorted(self._u2 - self._survivor_set):
            partners = [u for u in self._graph[v] if u in self._survivor_set]
            if not partners:
                continue
            s_pk = self._bundles[v].s_pk
            s_sk = self._rebuild(
                v,
                self._sk_shares,
                "pairwise key",
                lambda sk, s_pk=s_pk: crypto.x25519_public(sk) == s_pk,
            )
            for u in partners:
                key = pair_mask_key(s_sk, self._bundles[u].s_pk, self.round_id, v, u)
                mask = crypto.expand_mask(key, total.size, dtype)
                if u < v:  # u added this mask
                    total -= mask
                else:
                    total += mask
        weighted, weight = dequantize(total, self.config)
        self._result = SecAggResult(
            weighted_sum=weighted,
            total_weight=weight,
            survivors=list(self._survivors),
            dropped={k: list(v) for k, v in self.dropped.items()},
            rejected=dict(self.rejected),
            unmask_errors=list(self.unmask_errors),
        )
        self._total = None
        self.stage = None

    def _rebuild(
        self,
        cid: int,
        shares: dict[int, list[tuple[int, bytes]]],
        what: str,
        valid: Callable[[bytes], bool],
    ) -> bytes:
        """Rebuild a secret from t of its shares, trying other t-subsets when one is wrong.

        A neighbour that sends a wrong (well-formed) share must not abort the round for all:
        the first t shares are tried, then the t-subsets that leave out one share after another,
        until the rebuilt secret matches its public commitment. Each miss is kept in
        ``unmask_errors``. The number of subsets tried is capped, so a coordinator-side loop
        cannot be driven by many bad shares into combinatorial time.
        """
        got = shares.get(cid, [])
        t = self.config.threshold
        if len(got) < t:
            raise RoundFailedError(
                f"only {len(got)} shares of the {what} of client {cid} came back; "
                f"{t} are needed (too many dropouts)"
            )
        for tried, subset in enumerate(itertools.combinations(got, t)):
            if tried >= _MAX_SUBSETS:
                break
            secret = shamir.combine([p for p, _ in subset], [s for _, s in subset], _SECRET_BYTES)
            if valid(secret):
                return secret
            self.unmask_errors.append(
                f"the {what} of client {cid} rebuilt from points "
                f"{[p for p, _ in subset]} does not match its commitment"
            )
        raise RoundFailedError(
            f"no subset of {t} of the {len(got)} shares of the {what} of client {cid} "
            "rebuilds it: too many wrong shares"
        )

    def _require(self, ok: bool, what: str) -> None:
        if not ok:
            self.stage = None
            raise RoundFailedError(
                f"only {len(self.active)} clients {what}; the threshold is "
                f"{self.config.threshold}: the round cannot complete safely"
            )

    def result(self) -> SecAggResult:
        """Return the unmasked weighted sum (after the unmask stage)."""
        if self._result is None:
            raise SecAggError(f"the round is not finished (stage {self.stage})")
        return self._result
