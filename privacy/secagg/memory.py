"""Run a whole SecAgg+ round in one process: the reference driver for tests and benchmarks.

It plays the transport: it hands each client its payload, rebuilds the client from its saved
state at every stage (as a Flower ClientApp must), and silences the clients listed in
``drop_at`` from that stage on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .client import SecAggClient
from .config import SecAggConfig
from .identity import SiteIdentity, ephemeral_federation
from .messages import Payload, Stage, payload_nbytes
from .server import SecAggResult, SecAggServer


@dataclass
class InMemoryRun:
    """The outcome of ``run_protocol_in_memory`` plus what the benchmark measures."""

    result: SecAggResult | None
    server: SecAggServer
    states: dict[int, dict] = field(default_factory=dict)
    upload_bytes: dict[int, int] = field(default_factory=dict)
    download_bytes: dict[int, int] = field(default_factory=dict)
    mask_seconds: dict[int, float] = field(default_factory=dict)
    unmask_seconds: float = 0.0
    transcript: dict[str, dict[int, tuple[Payload, Payload]]] = field(default_factory=dict)


def run_protocol_in_memory(
    updates: Sequence[np.ndarray],
    weights: Sequence[int] | None,
    config: SecAggConfig,
    drop_at: dict[Stage | str, set[int]] | None = None,
    *,
    client_ids: Sequence[int] | None = None,
    server_cls: type[SecAggServer] = SecAggServer,
    keep_transcript: bool = False,
    stop_before: Stage | None = None,
    identities: Mapping[int, SiteIdentity] | None = None,
) -> InMemoryRun:
    """Aggregate ``updates`` securely and return the coordinator's result.

    Parameters
    ----------
    updates : sequence of np.ndarray
        One flat float update per client, all the same length.
    weights : sequence of int or None
        Integer weight of each client (example counts); None for equal weights.
    config : SecAggConfig
        Round parameters (``num_clients`` at least ``len(updates)``).
    drop_at : dict, optional
        Stage -> client ids that stop answering from that stage on.
    client_ids : sequence of int, optional
        Ids of the clients (default ``0 .. n-1``), e.g. Flower node ids.
    server_cls : type
        Coordinator implementation (tests pass lying subclasses).
    keep_transcript : bool
        Keep every (request, reply) pair, i.e. the coordinator's whole view.
    stop_before : Stage, optional
        Stop when this stage is due, leaving ``result`` None and the clients' saved states in
        ``states`` (tests then play a lying coordinator by hand).
    identities : mapping, optional
        Client id -> its certified identity; by default one per client under a fresh CA.
    """
    ids = list(client_ids) if client_ids is not None else list(range(len(updates)))
    by_id = dict(zip(ids, updates, strict=True))
    sites = identities if identities is not None else ephemeral_federation(ids)
    weight_of = dict(zip(ids, weights if weights is not None else [1] * len(ids), strict=True))
    silent: set[int] = set()
    drops = {Stage(k): set(v) for k, v in (drop_at or {}).items()}
    server = server_cls(config, ids, int(np.asarray(updates[0]).size))
    run = InMemoryRun(result=None, server=server)
    states = run.states
    while not server.done:
        stage = server.stage
        assert stage is not None
        if stage == stop_before:
            return run
        silent |= drops.get(stage, set())
        replies: dict[int, Payload] = {}
        for cid, request in server.requests().items():
            run.download_bytes[cid] = run.download_bytes.get(cid, 0) + payload_nbytes(request)
            if cid in silent:
                continue
            start = time.perf_counter()
            if stage == Stage.SETUP:
                client, reply = SecAggClient.setup(request, sites[cid])
            else:
                client = SecAggClient.from_state(states[cid])
                reply = client.handle(request, by_id[cid], int(weight_of[cid]))
            if stage == Stage.MASKED_INPUT:
                run.mask_seconds[cid] = time.perf_counter() - start
            states[cid] = client.to_state()
            replies[cid] = reply
            run.upload_bytes[cid] = run.upload_bytes.get(cid, 0) + payload_nbytes(reply)
            if keep_transcript:
                run.transcript.setdefault(stage.value, {})[cid] = (request, reply)
        start = time.perf_counter()
        server.receive(replies)
        if stage == Stage.UNMASK:
            run.unmask_seconds = time.perf_counter() - start
    run.result = server.result()
    return run
