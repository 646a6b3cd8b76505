"""A real deployment on loopback: flower-superlink with TLS and node authentication, real
flower-supernode processes on image folders written to disk, through `fedvlm coordinator`
and `fedvlm node` exactly as a user runs them.

Every process is started in its own session and stopped by PID (with its descendants) in a
fixture's `finally`, also when a test fails.
"""

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.checkpoint import load_checkpoint
from coordinator.launch import CoordinatorOptions, register_site_keys, running_superlink
from coordinator.ledger import read_ledger
from fedvlm.processes import child_env, free_port

# The fixtures `processes` and `federation_files` come from tests/deploy_helpers.py by name.
# ruff: noqa: F811
from tests.deploy_helpers import (  # noqa: F401
    RUN_TIMEOUT,
    SITES,
    THREE_SITES,
    coordinator_args,
    descendants_running,
    federation_files,
    fedvlm,
    node_args,
    port_open,
    process_scope,
    processes,
    registered,
    sha256,
    start_nodes,
    wait_for,
)

pytestmark = pytest.mark.slow


@dataclass
class DeployedRun:
    """What the uninterrupted end-to-end run left behind."""

    exit_code: int
    log: str
    run: Path
    state_dir: Path
    port: int
    nodes_alive: bool


@pytest.fixture(scope="module")
def deployed_run(federation_files, tmp_path_factory) -> Iterator[DeployedRun]:
    """One uninterrupted deployment: `fedvlm coordinator` plus two `fedvlm node`."""
    creds, folders = federation_files
    root = tmp_path_factory.mktemp("deployed")
    port = free_port()
    with process_scope(root) as processes:
        coordinator, log = processes.start(
            "coordinator",
            coordinator_args(creds, root / "state", port, root / "runs", **{"run-name": "e2e"}),
        )
        wait_for(lambda: registered(log), 60, "the sites' registration", coordinator)
        nodes = start_nodes(processes, creds, folders, port)
        code = coordinator.wait(timeout=RUN_TIMEOUT)
        yield DeployedRun(
            code,
            log.read_text(),
            root / "runs" / "e2e",
            root / "state",
            port,
            all(node.poll() is None for node in nodes),
        )


def test_two_sites_train_two_rounds_with_tls_and_node_auth(deployed_run):
    assert deployed_run.exit_code == 0, deployed_run.log[-3000:]
    run = deployed_run.run
    rows = read_ledger(run)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert len(row["sites"]) == 2 and row["dropped"] == [] and row["rejected"] == []
        assert row["bytes_up"] > 0 and row["bytes_down"] > 0
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert load_checkpoint(run).server_round == 2
    # The one command started the SuperLink with TLS, node auth and a database ...
    assert "--enable-supernode-auth" in deployed_run.log and "--ssl-certfile" in deployed_run.log
    assert (deployed_run.state_dir / "superlink.db").is_file()
    # ... and stopped it again, while the sites stay up waiting for the next server.
    assert not port_open(deployed_run.port)
    assert deployed_run.nodes_alive


@pytest.fixture
def superlink(federation_files, tmp_path) -> Iterator[int]:
    """A SuperLink with TLS and node auth, the two sites registered; yields its port."""
    creds, _ = federation_files
    port = free_port()
    options = CoordinatorOptions(
        credentials=creds.folder,
        site_keys=[creds.site_keys[s][1] for s in SITES],
        state_dir=tmp_path / "superlink",
        host="127.0.0.1",
        port=port,
    )
    with running_superlink(options) as env:
        register_site_keys(options.site_keys, env)
        yield port


def test_unregistered_node_is_refused(superlink, federation_files, processes):
    creds, folders = federation_files
    args = node_args(creds, folders, SITES[0], superlink)
    args[args.index("--private-key") + 1] = str(creds.site_keys["intruder"][0])
    intruder, log = processes.start("intruder", args)
    assert intruder.wait(timeout=60) != 0
    assert "Failed to activate SuperNode" in log.read_text()
    # ... and `fedvlm node` says why, and what to do (the reason was only in superlink.log).
    assert "its public key is not registered there" in log.read_text()


def test_node_without_the_ca_certificate_cannot_connect(superlink, federation_files, processes):
    creds, folders = federation_files
    node, log = processes.start(
        "no-ca",
        [
            str(Path(sys.executable).parent / "flower-supernode"),
            "--superlink",
            f"127.0.0.1:{superlink}",
            "--auth-supernode-private-key",
            str(creds.site_keys[SITES[0]][0]),
            "--node-config",
            f'data-path="{folders[SITES[0]]}"',
            "--port",
            str(free_port()),
        ],
    )
    assert node.wait(timeout=60) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in log.read_text()


def test_invalid_data_folder_refuses_to_start(federation_files, tmp_path):
    creds, folders = federation_files
    broken = tmp_path / "broken"
    broken.mkdir()
    lines = (folders[SITES[0]] / "metadata.jsonl").read_text().splitlines()
    (broken / "images").symlink_to(folders[SITES[0]] / "images")
    record = json.loads(lines[2])
    del record["answer"]
    lines[2] = json.dumps(record)
    (broken / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    args = node_args(creds, {SITES[0]: broken}, SITES[0], free_port())
    result = subprocess.run(args, env=child_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert re.search(r"metadata\.jsonl:3: missing field 'answer'", result.stderr), result.stderr
    assert "flower-supernode" not in result.stdout  # refused before joining


def test_coordinator_killed_mid_run_resumes_to_the_same_adapter(
    processes, federation_files, deployed_run, tmp_path
):
    assert deployed_run.exit_code == 0, "the uninterrupted reference run failed"
    reference = sha256(deployed_run.run / "adapter" / "adapter_model.safetensors")
    creds, folders = federation_files
    port, run = free_port(), tmp_path / "runs" / "killed"
    args = coordinator_args(
        creds, tmp_path / "state", port, tmp_path / "runs", **{"run-name": "killed"}
    )
    first, log = processes.start("coordinator-1", args)
    wait_for(lambda: registered(log), 60, "the sites' registration", first)
    start_nodes(processes, creds, folders, port)
    wait_for(lambda: (run / "checkpoint.npz").is_file(), RUN_TIMEOUT, "round 1", first)

    serverapp = descendants_running(first.pid, "flwr-serverapp")
    assert len(serverapp) == 1
    serverapp[0].kill()  # SIGKILL the coordinator's ServerApp mid-run ...
    processes.sigkill_tree(first)  # ... and the rest of the coordinator host with it
    assert [r["round"] for r in read_ledger(run)] == [0, 1]
    assert not (run / "adapter").exists()

    # No --run-config on resume: the settings come back from the run folder's run.json.
    pairs = {i for i, a in enumerate(args) if a == "--run-config"}
    bare = [a for i, a in enumerate(args) if i not in pairs and i - 1 not in pairs]
    resumed, log2 = processes.start("coordinator-2", bare + ["--resume", str(run)])
    assert resumed.wait(timeout=RUN_TIMEOUT) == 0, log2.read_text()[-3000:]
    assert "resuming after round 1" in log2.read_text()
    assert [r["round"] for r in read_ledger(run)] == [0, 1, 2]  # no round counted twice
    assert sha256(run / "adapter" / "adapter_model.safetensors") == reference


def test_a_site_dying_mid_round_is_recorded_and_the_round_completes(
    processes, federation_files, tmp_path
):
    """Three sites, min-available-nodes = 3 (every site), one SIGKILLed while it trains.

    Flower's evaluate sampling waits forever for min-available-nodes connected sites; the
    coordinator hung there before `liveness.evaluation_messages` (the mutation: build the
    evaluate messages with `strategy.configure_evaluate` again and the coordinator never
    exits). The run must finish within round-timeout + node-wait-timeout of waiting.
    """
    creds, folders = federation_files
    port, run = free_port(), tmp_path / "runs" / "dropout"
    # round-timeout leaves room for three ClientApps loading the model on two busy cores.
    round_timeout, node_wait = 150.0, 30.0
    args = coordinator_args(
        creds,
        tmp_path / "state",
        port,
        tmp_path / "runs",
        sites=THREE_SITES,
        **{
            "run-name": "dropout",
            "num-server-rounds": 1,
            "min-train-nodes": 2,
            "min-available-nodes": 3,
            "round-timeout": round_timeout,
            "node-wait-timeout": node_wait,
        },
    )
    coordinator, log = processes.start("coordinator", args)
    wait_for(lambda: registered(log, THREE_SITES), 60, "the sites' registration", coordinator)
    *survivors, victim = start_nodes(processes, creds, folders, port, THREE_SITES)

    def clientapps() -> set[int]:
        return {p.pid for p in descendants_running(victim.pid, "flwr-clientapp")}

    # Round 0 is evaluated at the sites (real folders, no held-out set): kill in round 1,
    # in a ClientApp that did not exist when round 0 was recorded.
    wait_for(lambda: len(read_ledger(run)) >= 1, RUN_TIMEOUT, "round 0", coordinator)
    round_0 = clientapps()
    wait_for(lambda: clientapps() - round_0, RUN_TIMEOUT, "site-c's round-1 ClientApp", coordinator)
    processes.sigkill_tree(victim)  # the site dies while it trains

    # The waits are bounded by round-timeout (the dead site's reply) and node-wait-timeout;
    # the rest of the allowance is the survivors' work and the report on a loaded machine.
    # A hang (the bug) runs past it.
    assert coordinator.wait(timeout=round_timeout + node_wait + 150) == 0, log.read_text()[-3000:]
    rows = read_ledger(run)
    assert [r["round"] for r in rows] == [0, 1]
    assert len(rows[1]["sites"]) == 2 and len(rows[1]["dropped"]) == 1
    assert not set(rows[1]["dropped"]) & set(rows[1]["sites"])
    # Evaluation went to the survivors only.
    assert sorted(rows[1]["site_eval"]["sites"]) == sorted(str(n) for n in rows[1]["sites"])
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert all(node.poll() is None for node in survivors)


def test_deployed_dp_sites_keep_their_accounts_in_their_own_state_dir(
    processes, federation_files, tmp_path, site_state_dir
):
    """Minimum settings: each real node writes its sample-level account to its node-local
    file (privacy/account_store.py), outside Flower's per-run state, with every step the
    coordinator's ledger accounted for it."""
    coordinator, log, run, _ = start_dp_federation(processes, federation_files, tmp_path, "dp")
    assert coordinator.wait(timeout=RUN_TIMEOUT) == 0, log.read_text()[-3000:]
    sites = read_ledger(run)[-1]["privacy"]["sites"]
    assert len(sites) == 2
    for site, account in sites.items():
        assert stored_steps(site_state_dir, run, site) == account["steps"] == 2


def start_dp_federation(processes, federation_files, tmp_path, name: str):
    """`fedvlm coordinator` (sample-level DP, minimum settings) and two `fedvlm node`;
    returns the coordinator, its log, the run folder and the nodes."""
    creds, folders = federation_files
    port, run = free_port(), tmp_path / "runs" / name
    dp = {"dp-mode": "sample", "dp-noise-multiplier": 1.0, "dp-target-epsilon": 50.0}
    args = coordinator_args(
        creds, tmp_path / "state", port, tmp_path / "runs", **{"run-name": name, **dp}
    )
    coordinator, log = processes.start("coordinator", args)
    wait_for(lambda: registered(log), 60, "the sites' registration", coordinator)
    return coordinator, log, run, start_nodes(processes, creds, folders, port)


def stored_steps(state_dir: Path, run: Path, site: str) -> int:
    """Steps in a site's node-local sample-level account file (privacy/account_store.py)."""
    federation = json.loads((run / "run.json").read_text())["federation_id"]
    path = state_dir / "privacy" / f"{federation}.site-{site}.json"
    return sum(json.loads(path.read_text())["steps"])


def test_a_site_worker_killed_mid_round_is_restarted_and_nothing_is_counted_twice(
    processes, federation_files, tmp_path, site_state_dir
):
    """SIGKILL one node's site worker while its round-1 ClientApp runs: round 1 completes
    (the message is retried on the restarted worker) or records that site as dropped; round 2
    has every site again, on the restarted worker; every site's sample-level DP account holds
    exactly the steps of the rounds the ledger counts it in (local-steps = 1 per round)."""
    coordinator, log, run, (_, victim) = start_dp_federation(
        processes, federation_files, tmp_path, "worker-killed"
    )

    def clientapps() -> set[int]:
        return {p.pid for p in descendants_running(victim.pid, "flwr-clientapp")}

    wait_for(lambda: len(read_ledger(run)) >= 1, RUN_TIMEOUT, "round 0", coordinator)
    round_0 = clientapps()
    wait_for(lambda: clientapps() - round_0, RUN_TIMEOUT, "the round-1 ClientApp", coordinator)
    [worker] = descendants_running(victim.pid, "client.site_worker")
    worker.kill()  # mid-round: its ClientApp is forwarding a message to it

    assert coordinator.wait(timeout=RUN_TIMEOUT) == 0, log.read_text()[-3000:]
    rows = read_ledger(run)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert len(rows[1]["sites"]) + len(rows[1]["dropped"]) == 2  # completed, or dropped
    assert len(rows[2]["sites"]) == 2 and rows[2]["dropped"] == []  # the restarted worker
    [restarted] = descendants_running(victim.pid, "client.site_worker")
    assert restarted.pid != worker.pid
    for site in {str(n) for r in rows for n in r["sites"]}:
        counted = sum(site in {str(n) for n in r["sites"]} for r in rows)
        assert stored_steps(site_state_dir, run, site) == counted  # one step a counted round
