"""A deployed round with secure aggregation: real SuperLink (TLS, node auth) and SuperNodes
started by `fedvlm coordinator` / `fedvlm node`, where every stage message starts a fresh
ClientApp process, so the sites' secrets must survive in `context.state` between them.

Uses the deployment helpers and fixtures of tests/deploy_helpers.py.
"""

import pytest

from coordinator.ledger import read_ledger
from fedvlm.processes import free_port
from tests.deploy_helpers import (
    RUN_TIMEOUT,
    coordinator_args,
    federation_files,  # noqa: F401  (a fixture, used by name)
    process_scope,
    registered,
    start_nodes,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_a_deployed_round_with_secure_aggregation_completes(federation_files, tmp_path):  # noqa: F811
    creds, folders = federation_files
    port = free_port()
    # Two sites: each learns the other's update from the sum, so no colluding site can be
    # excluded; the run states it (secagg-corrupt-fraction = 0), else it is refused at start,
    # and so does each site's own node config, else the site holds the coordinator to the
    # default 0.05 and refuses (tests/test_secure_phase.py).
    extra = {
        "run-name": "secure",
        "num-server-rounds": 1,
        "secure-aggregation": True,
        "secagg-corrupt-fraction": 0.0,
    }
    with process_scope(tmp_path) as processes:
        coordinator, log = processes.start(
            "coordinator",
            coordinator_args(creds, tmp_path / "state", port, tmp_path / "runs", **extra),
        )
        wait_for(lambda: registered(log), 60, "the sites' registration", coordinator)
        start_nodes(processes, creds, folders, port, node_config=["secagg-corrupt-fraction=0.0"])
        code = coordinator.wait(timeout=RUN_TIMEOUT)
    assert code == 0, log.read_text()[-3000:]
    rows = read_ledger(tmp_path / "runs" / "secure")
    assert [r["round"] for r in rows] == [0, 1]
    assert len(rows[1]["sites"]) == 2 and rows[1]["dropped"] == []
    assert rows[1]["train_loss"] is not None and rows[1]["bytes_up"] > 0
    assert (tmp_path / "runs" / "secure" / "adapter" / "adapter_model.safetensors").is_file()
