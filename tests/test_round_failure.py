"""A round that cannot aggregate is on record, with every site's reason, before the run stops.

Runs the real coordinator and ClientApps in this process (`simulations.in_process`). Before,
two sites started as the README showed (`--node-config lora-rank=4`, default fedavg) ended in
"no valid update arrived" with only round 0 in the ledger and no reason anywhere.
"""

import pytest

from client import app as client_app
from coordinator.ledger import read_ledger
from coordinator.liveness import NotEnoughSitesError
from simulations.in_process import InProcessGrid, run_coordinator

SITES = 2


def test_sites_whose_rank_the_strategy_cannot_take_stop_the_run_with_reasons_on_record(tmp_path):
    config = {
        "num-server-rounds": 2,
        "local-steps": 1,
        "batch-size": 4,
        "sim-examples-per-site": 8,
        "sim-val-examples-per-site": 4,
        "heldout-examples": 8,
        "min-train-nodes": SITES,
        "min-available-nodes": SITES,
        "energy-tracking": False,
        "run-dir": str(tmp_path),
        "run-name": "ranks",
    }
    grid = InProcessGrid(client_app.app, config, [{"lora-rank": 4}] * SITES)
    with pytest.raises(NotEnoughSitesError, match=r"(?s)only 0 site.*lora-rank=4.*strategy"):
        run_coordinator(grid, config)
    rows = read_ledger(tmp_path / "ranks")
    assert [r["round"] for r in rows] == [0, 1]
    stopped = rows[1]
    assert stopped["sites"] == [] and sorted(stopped["dropped"]) == sorted(grid.contexts)
    assert set(stopped["errors"]) == {str(n) for n in grid.contexts}
    for reason in stopped["errors"].values():
        assert "lora-rank=4" in reason and "strategy hetlora or flora" in reason
    assert "lora-rank=4" in stopped["stopped"]
