"""Each site trains on its own seed: by partition in simulation, by name in a deployment."""

from flwr.app import Context, RecordDict

from client.site_identity import site_seed


def _context(node_config: dict, node_id: int = 7) -> Context:
    return Context(
        run_id=1, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={}
    )


def test_deployed_sites_get_distinct_seeds_that_survive_a_restart():
    """A deployed node has no partition-id: before, every deployed site trained with the run's
    seed plus 0, so all of them drew the same batch order in a round. Their names set it now;
    the same site restarted (a new Flower node id) keeps its seed."""
    names = [f"hospital-{c}" for c in "abcdefgh"]
    seeds = [site_seed(_context({"site-name": name})) for name in names]
    assert len(set(seeds)) == len(names)
    restarted = site_seed(_context({"site-name": "hospital-a"}, node_id=99))
    assert restarted == seeds[0]


def test_a_simulated_site_keeps_its_partition_as_seed():
    """Simulated runs stay reproducible with the seeds they had (run seed + partition)."""
    assert site_seed(_context({"partition-id": 3, "site-name": "ignored"})) == 3
    assert site_seed(_context({"partition-id": 0})) == 0
