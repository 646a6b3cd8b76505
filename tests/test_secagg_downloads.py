"""Past setup, a site's downloads carry O(k) entries, not O(n): its neighbours' only.

Behaviour, not wall-clock: at n = 100 (k = 26 at the defaults) every list in every request a
site receives is counted against one ring segment (2k + 1 ids: its neighbours' closed
neighbourhoods), well below n. The lists still O(n) are named here, all at setup: the sampled
ids (setup), the committed set (ids, certified identity fingerprints and seed commitments, at
the reveal stage) and every committed site's graph-seed reveal (key sharing), which together
draw a graph seed the coordinator cannot steer and bind each node id to one certified site.

Mutations tried (defence removed -> test that fails):
- the coordinator sends the whole survivor list again (``SecAggServer._local_survivors``
  returning ``self._survivors``) -> ``test_downloads_past_setup_carry_neighbours_only``
  (the consistency and unmask requests carry 98 survivors);
- every signature again (``self.signers_payload(self._signatures)`` in ``_unmask_request``)
  -> the same test (98 signer ids, signatures, round keys, certificates and key signatures).
"""

import numpy as np

from privacy.secagg import SecAggConfig, Stage, messages, run_protocol_in_memory

N = 100
STILL_O_N = {
    (Stage.SETUP.value, messages.SAMPLED),
    (Stage.REVEAL.value, messages.COMMITTED),
    (Stage.REVEAL.value, messages.COMMITTED_FPS),
    (Stage.REVEAL.value, messages.COMMITTED_SEEDS),
    (Stage.SHARE_KEYS.value, messages.REVEALS),
}


def test_downloads_past_setup_carry_neighbours_only():
    config = SecAggConfig(num_clients=N, clip=1.0)
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-1, 1, 8).astype(np.float32) for _ in range(N)]
    dropped = {3, 50}
    run = run_protocol_in_memory(
        updates, None, config, {Stage.MASKED_INPUT: dropped}, keep_transcript=True
    )
    assert sorted(run.result.survivors) == sorted(set(range(N)) - dropped)
    segment = 2 * config.degree + 1
    assert segment < N - len(dropped)  # the full lists would not fit
    longest: dict[tuple[str, str], int] = {}
    for stage, exchanges in run.transcript.items():
        for request, _ in exchanges.values():
            for key, value in request.items():
                if isinstance(value, list):
                    longest[stage, key] = max(longest.get((stage, key), 0), len(value))
    too_long = {
        where: length
        for where, length in longest.items()
        if length > segment and where not in STILL_O_N
    }
    assert not too_long, f"lists longer than a ring segment of {segment}: {too_long}"
    # The lists this bound is about were there and carried entries.
    for key in (
        messages.SURVIVORS,
        messages.SIGNER_IDS,
        messages.SIGNATURES,
        messages.SIGNER_SIG_PKS,
        messages.SIGNER_CERTS,
        messages.SIGNER_ID_SIGS,
    ):
        assert longest[Stage.UNMASK.value, key] >= config.threshold - 1
    assert longest[Stage.CONSISTENCY.value, messages.SURVIVORS] >= config.threshold
