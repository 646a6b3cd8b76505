"""A malicious coordinator driven through the project's own SecAgg+ classes.

Mutations tried (defence removed -> test that fails):
- client no longer compares the sent neighbours with its own graph (``peer_ids != expected``
  check removed) -> ``test_discarding_setup_replies_does_not_move_a_victims_neighbours``;
- graph drawn over the clients that completed setup (the old recipe) instead of the sampled
  ids -> the same test.
"""

import os

import pytest

from privacy.secagg import (
    CoordinatorMisbehaviourError,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    messages,
)
from privacy.secagg.graph import graph_seed, neighbours
from privacy.secagg.identity import ephemeral_federation

N = 100
SITES = ephemeral_federation(range(N))


def _setup_discarding(discard: int, round_id: bytes):
    """Run setup with every sampled client, drop ``discard``'s reply; return server and clients."""
    config = SecAggConfig(num_clients=N, clip=1.0)
    server = SecAggServer(config, list(range(N)), 8, round_id=round_id)
    replies, clients = {}, {}
    for cid, request in server.requests().items():
        clients[cid], replies[cid] = SecAggClient.setup(request, SITES[cid])
    del replies[discard]
    server.receive(replies)
    return server, clients


def test_discarding_setup_replies_does_not_move_a_victims_neighbours():
    """Grinding: a coordinator discards one honest setup reply at a time hoping to re-draw the
    graph so that its colluders land next to victim 0. The graph is fixed from the round id and
    the sampled ids before any reply, so each try only removes the discarded vertex, and a graph
    re-drawn over the accepted replies is refused by the victim."""
    round_id = os.urandom(16)
    victim = 0
    sampled = list(range(N))
    degree = SecAggConfig(num_clients=N, clip=1.0).degree
    fixed = neighbours(sampled, degree, graph_seed(round_id, sampled))[victim]
    refused = 0
    for discard in range(1, 15):
        server, clients = _setup_discarding(discard, round_id)
        request = server.requests()[victim]
        peers = request[messages.PEER_IDS]
        assert peers == [p for p in fixed if p != discard]
        saved = clients[victim].to_state()
        assert isinstance(SecAggClient.from_state(saved).handle(dict(request)), dict)
        # The old recipe: a graph over the replies the coordinator chose to accept.
        active = sorted(server.requests())
        ground = neighbours(active, server.config.degree, graph_seed(round_id, active))[victim]
        if ground != peers:
            request[messages.PEER_IDS] = ground
            with pytest.raises(CoordinatorMisbehaviourError, match="public graph"):
                SecAggClient.from_state(saved).handle(request)
            refused += 1
    assert refused > 0
