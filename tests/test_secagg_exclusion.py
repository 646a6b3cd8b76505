"""Excluding honest sites at setup, run through the project's own SecAgg+ classes.

The coordinator samples n sites and derives (k, t) for n, with ceil(γ n) of them colluding.
Nothing stops it from claiming that the honest sites other than a victim never answered setup.
If the graph were drawn over the sites that answered (the committed set), the victim's
neighbours would then be colluders only: at n = 1,000 (γ = 0.05: 50 colluding sites, k = 74,
t = 49) the victim plus 49 colluders make a committed set of 50, a complete graph, and the
unmasked sum minus the colluders' own updates is the victim's update. Bell et al. draw the graph
over every sampled client, a silent one being a missing vertex; then the victim's neighbours
are a random k-subset of the n - 1 others, as the bounds assume, whoever the coordinator
silences, and a victim whose committed neighbours are fewer than t stops before any share of
its secrets leaves it.

Mutation tried (defence removed -> test that fails): the ring drawn over the committed set
instead of the sampled one (``Ring(self.participants, ...)`` in ``SecAggClient.share_keys`` and
``SecAggServer._after_reveal``) -> ``test_silencing_the_honest_sites_at_setup_opens_no_update``
(the victim's update comes out of the sum, max error 2.3e-6 on values in [-0.5, 0.5]: the
quantisation error of 50 summed updates).
"""

import numpy as np
import pytest

from privacy.secagg import (
    RoundFailedError,
    SecAggClient,
    SecAggConfig,
    Stage,
    run_protocol_in_memory,
)
from privacy.secagg.identity import ephemeral_federation

N = 1_000
VICTIM = 0
LENGTH = 16


def _opened_by_the_colluders(run, updates, colluders) -> np.ndarray:
    """The victim's update as the coordinator reads it: the sum minus its colluders' own."""
    return run.result.weighted_sum - sum(updates[c].astype(np.float64) for c in colluders)


def test_silencing_the_honest_sites_at_setup_opens_no_update():
    config = SecAggConfig(num_clients=N, clip=1.0)
    colluders = list(range(1, config.threat.corrupt(N)))  # with the victim: 50 committed
    assert len(colluders) + 1 > config.threshold  # enough to pass the server's own checks
    answering = [VICTIM, *colluders]
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-0.5, 0.5, LENGTH).astype(np.float32) for _ in range(N)]
    attack = {
        "updates": updates,
        "weights": None,
        "config": config,
        "drop_at": {Stage.SETUP: set(range(N)) - set(answering)},
        "identities": ephemeral_federation(answering),  # the silenced sites never run a line
    }
    try:
        run = run_protocol_in_memory(**attack)
    except RoundFailedError as refused:
        assert "fewer than the threshold" in str(refused)
    else:
        error = np.abs(_opened_by_the_colluders(run, updates, colluders) - updates[VICTIM]).max()
        pytest.fail(f"the victim's update came out of the sum (max error {error:.2g})")
    # The victim stops at key sharing, before any share of its secrets is drawn.
    run = run_protocol_in_memory(**attack, stop_before=Stage.SHARE_KEYS)
    victim = SecAggClient.from_state(run.states[VICTIM])
    with pytest.raises(RoundFailedError, match="fewer than the threshold"):
        victim.handle(run.server.requests()[VICTIM])
    assert victim.peer_ids == []
