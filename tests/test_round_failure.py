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


def _config(tmp_path, name: str) -> dict:
    return {
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
        "run-name": name,
    }


def test_sites_whose_rank_the_strategy_cannot_take_stop_the_run_with_reasons_on_record(tmp_path):
    config = _config(tmp_path, "ranks")
    grid = InProcessGrid(client_app.app, config, [{"lora-rank": 4}, {}])
    with pytest.raises(NotEnoughSitesError, match=r"(?s)only 1 site.*lora-rank=4.*strategy"):
        run_coordinator(grid, config)
    rows = read_ledger(tmp_path / "ranks")
    assert [r["round"] for r in rows] == [0, 1]
    stopped = rows[1]
    refuser, trainer = (str(n) for n in grid.contexts)
    assert stopped["sites"] == [] and stopped["dropped"] == [int(refuser)]
    assert list(stopped["errors"]) == [refuser]
    assert "lora-rank=4" in stopped["errors"][refuser]
    assert "strategy hetlora or flora" in stopped["errors"][refuser]
    assert "lora-rank=4" in stopped["stopped"]
    # The site that did train spent energy on a round that failed: it is on record.
    assert list(stopped["energy"]["nodes"]) == [trainer]


def test_each_sites_train_seconds_reach_the_ledger(tmp_path):
    config = {**_config(tmp_path, "seconds"), "num-server-rounds": 1}
    run_coordinator(InProcessGrid(client_app.app, config, [{}] * SITES), config)
    row = read_ledger(tmp_path / "seconds")[1]
    assert set(row["train_seconds"]) == {str(n) for n in row["sites"]}
    assert all(seconds > 0 for seconds in row["train_seconds"].values())
