"""Secure aggregation with client-level DP through Flower's simulation engine (SuperLink + Ray):
the six stages as real messages between a ServerApp and ClientApps, the sites' secrets in
`context.state`, clipping before masking and noise on the unmasked sum."""

import pytest

from coordinator.ledger import read_ledger
from simulations.runner import run_scenario
from simulations.scenario import Scenario

pytestmark = pytest.mark.slow

SCENARIO = Scenario(
    name="secure",
    federation={"num-supernodes": 4, "client-resources-num-cpus": 2},
    run_config={
        "num-server-rounds": 3,
        "local-steps": 16,
        "sim-examples-per-site": 64,
        "sim-val-examples-per-site": 8,
        "heldout-examples": 96,
        "min-train-nodes": 4,
        "min-available-nodes": 4,
        "energy-tracking": False,
    },
)


def test_a_simulated_federation_with_secure_aggregation_and_client_level_dp_learns(tmp_path):
    # Four sites cannot buy a meaningful client-level ε (docs/architecture.md: DP needs many
    # sites): the noise here is small enough to learn, so this checks the composition,
    # not the privacy.
    dp = {
        "dp-mode": "client",
        "dp-client-clip": 5.0,
        "dp-client-noise-multiplier": 0.01,
        "dp-client-target-epsilon": 1e9,
        "dp-accountant": "rdp",
    }
    run_dir = run_scenario(SCENARIO, {"secure-aggregation": True, **dp}, run_dir=tmp_path)
    rows = read_ledger(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for row in rows[1:]:
        assert len(row["sites"]) == 4 and row["dropped"] == [], row
        assert "train_loss" not in row  # withheld under DP
        assert row["privacy"]["unit"] == "site" and row["privacy"]["epsilon"] > 0
    assert rows[-1]["heldout_accuracy"] > rows[0]["heldout_accuracy"] + 0.05
