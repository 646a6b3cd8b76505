"""The launchers' checks and the Flower command lines they build (one slow test starts one)."""

import contextlib
import json
import os
import shlex
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cli.main import main
from client.launch import (
    NodeOptions,
    node_config_text,
    refuse_tls_link_when_insecure,
    supernode_command,
)
from coordinator.launch import (
    CONNECTION,
    CoordinatorOptions,
    running_superlink,
    superlink_command,
    with_federation_size,
    with_run_folder,
)
from fedvlm.credentials import make_credentials
from fedvlm.data.imagefolder import write_imagefolder
from fedvlm.data.partition import synthetic_site
from fedvlm.errors import FedVLMError
from fedvlm.flower_toml import config_file_text
from fedvlm.processes import PROJECT_ROOT, flower_executable, free_port


@pytest.fixture
def creds(tmp_path):
    return make_credentials(tmp_path / "credentials", sites=["a"])


def test_superlink_runs_with_tls_node_auth_and_a_database(creds, tmp_path):
    options = CoordinatorOptions(
        credentials=creds.folder, site_keys=[creds.site_keys["a"][1]], state_dir=tmp_path / "s"
    )
    options.check()
    command = shlex.join(superlink_command(options, tmp_path / "log"))
    for flag in (
        f"--ssl-ca-certfile {creds.ca_cert}",
        f"--ssl-certfile {creds.server_cert}",
        f"--ssl-keyfile {creds.server_key}",
        "--enable-supernode-auth",
        f"--database {tmp_path / 's' / 'superlink.db'}",
        "--disable-runtime-dependency-installation",
    ):
        assert flag in command
    assert "--insecure" not in command

    insecure = CoordinatorOptions(credentials=None, site_keys=[], state_dir=tmp_path, insecure=True)
    insecure.check()
    command = superlink_command(insecure, tmp_path / "log")
    assert "--insecure" in command and "--enable-supernode-auth" not in command


def test_coordinator_refuses_missing_or_contradictory_inputs(creds, tmp_path):
    key = creds.site_keys["a"][1]
    cases = [
        ({"credentials": None, "site_keys": [key]}, "--credentials FOLDER is required"),
        ({"credentials": tmp_path, "site_keys": [key]}, "ca.crt does not exist"),
        ({"credentials": creds.folder, "site_keys": []}, "no site could join"),
        ({"credentials": creds.folder, "site_keys": [tmp_path / "x.pub"]}, "x.pub does not exist"),
        ({"credentials": None, "site_keys": [key], "insecure": True}, "node authentication needs"),
    ]
    for fields, message in cases:
        with pytest.raises(FedVLMError, match=message):
            CoordinatorOptions(state_dir=tmp_path, **fields).check()


def test_coordinator_refuses_a_world_readable_server_key(creds, tmp_path):
    """The node refused a readable site key; the SuperLink's own key went unchecked."""
    server_key = creds.folder / "server.key"
    options = CoordinatorOptions(
        state_dir=tmp_path, credentials=creds.folder, site_keys=[creds.site_keys["a"][1]]
    )
    options.check()
    server_key.chmod(0o644)
    try:
        with pytest.raises(FedVLMError, match=r"--credentials: .*server.key is readable"):
            options.check()
    finally:
        server_key.chmod(0o600)


def test_run_folder_is_made_absolute_and_resume_finds_a_name_under_run_dir(tmp_path):
    config, folder = with_run_folder({"run-dir": "out", "run-name": "r1"}, tmp_path)
    assert folder == tmp_path / "out" / "r1" and config["run-dir"] == str(tmp_path / "out")
    (tmp_path / "out" / "r1").mkdir(parents=True)
    config, folder = with_run_folder({"run-dir": "out", "resume": "r1"}, tmp_path)
    assert config["resume"] == str(tmp_path / "out" / "r1") == str(folder)


def test_node_command_carries_tls_key_and_site_settings(creds, tmp_path):
    options = NodeOptions(
        superlink="fl.example.org:8000",
        data_path=tmp_path / "site",
        root_certificates=creds.ca_cert,
        private_key=creds.site_keys["a"][0],
        settings={"carbon-intensity": 56.0, "lora-rank": 4, "country-iso-code": "CHE"},
        port=9100,
    )
    options.check()
    command = supernode_command(options, 9100)
    assert command[command.index("--root-certificates") + 1] == str(creds.ca_cert)
    assert command[command.index("--auth-supernode-private-key") + 1] == str(
        creds.site_keys["a"][0]
    )
    assert command[command.index("--node-config") + 1] == (
        f'data-path="{(tmp_path / "site").resolve()}" carbon-intensity=56.0 lora-rank=4 '
        'country-iso-code="CHE"'
    )
    assert command[command.index("--port") + 1] == "9100"
    with pytest.raises(FedVLMError, match="only scalars"):
        node_config_text(Path("x"), {"bad": [1, 2]})


def test_node_refuses_a_readable_private_key(creds, tmp_path):
    key = creds.site_keys["a"][0]
    key.chmod(0o644)
    options = NodeOptions("h:1", tmp_path, root_certificates=creds.ca_cert, private_key=key)
    with pytest.raises(FedVLMError, match="readable by others; chmod 600"):
        options.check()


def test_check_data_names_file_and_line(tmp_path, capsys):
    site = synthetic_site(0, 2, n_train=4, n_val=2, label_alpha=0.5, acquisition_skew=0.5, seed=0)
    folder = write_imagefolder({"train": site.train, "validation": site.val}, tmp_path / "site")
    assert main(["check-data", str(folder)]) == 0
    assert "is a valid site folder" in capsys.readouterr().out

    metadata = folder / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    lines[1] = lines[1].replace('"split": "train"', '"split": "holdout"')
    metadata.write_text("\n".join(lines) + "\n")
    assert main(["check-data", str(folder)]) == 2
    expected = "metadata.jsonl:2: split must be one of train, validation, test, val"
    assert expected in capsys.readouterr().err


def _serve_once(listener: socket.socket, tls: ssl.SSLContext | None) -> None:
    conn, _ = listener.accept()
    with contextlib.suppress(OSError):
        if tls is not None:
            conn = tls.wrap_socket(conn, server_side=True)
        conn.recv(1)
    conn.close()


@pytest.mark.parametrize("speaks_tls", [True, False])
def test_an_insecure_node_stops_at_once_against_a_tls_superlink(creds, speaks_tls):
    """flower-supernode --insecure against a TLS SuperLink retried silently forever."""
    tls = None
    if speaks_tls:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(creds.server_cert, creds.server_key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=_serve_once, args=(listener, tls), daemon=True)
        server.start()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        if speaks_tls:
            with pytest.raises(FedVLMError, match=r"--insecure: the SuperLink at .* speaks TLS"):
                refuse_tls_link_when_insecure(address)
        else:
            refuse_tls_link_when_insecure(address, timeout=2.0)  # plain link: the node goes on
        server.join(timeout=5)


def _flwr(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the `flwr` CLI as the README's second shell does (profile in FLWR_HOME)."""
    return subprocess.run(
        [flower_executable("flwr"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _json(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout[done.stdout.index("{") :])


def _log_until(env: dict[str, str], run_id: int, text: str, timeout: float = 180) -> str:
    """`flwr log RUN_ID CONNECTION --show` until the ServerApp's log holds `text`."""
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        shown = _flwr(env, "log", str(run_id), CONNECTION, "--show").stdout
        if text in shown:
            return shown
        time.sleep(2)
    raise AssertionError(f"`flwr log {run_id} --show` never showed {text!r}; last:\n{shown}")


@pytest.mark.slow
def test_flwr_ls_log_and_stop_manage_a_run_on_the_coordinators_superlink(creds, tmp_path):
    """README's `flwr ls` / `flwr log` / `flwr stop` lines, run as written against the SuperLink
    that `fedvlm coordinator` starts (its private `fedvlm-deployment` profile in FLWR_HOME).

    A run is submitted the way the coordinator submits it; no site ever connects, so the run
    stays live until `flwr stop` ends it and `flwr ls` reports it stopped.
    """
    options = CoordinatorOptions(
        credentials=creds.folder,
        site_keys=[creds.site_keys["a"][1]],
        state_dir=tmp_path / "superlink-state",
        host="127.0.0.1",
        port=free_port(),
    )
    run_config, run_folder = with_run_folder(
        {"run-dir": str(tmp_path / "runs"), "run-name": "managed", "num-server-rounds": 1}, tmp_path
    )
    config_file = tmp_path / "run-config.toml"
    config_file.write_text(config_file_text(run_config))
    with running_superlink(options):
        env = {**os.environ, "FLWR_HOME": str(options.state_dir / "flwr-home")}
        assert _json(_flwr(env, "ls", CONNECTION, "--format", "json"))["runs"] == []

        submitted = _flwr(
            env,
            "run",
            str(PROJECT_ROOT),
            CONNECTION,
            "--run-config",
            str(config_file),
            "--format",
            "json",
        )
        reply = _json(submitted)
        assert reply.get("success") is True, reply
        run_id = int(reply["run-id"])
        shown = _log_until(env, run_id, f"fedvlm: run folder {run_folder}")
        assert "Traceback" not in shown

        stopped = _flwr(env, "stop", str(run_id), CONNECTION, "--format", "json")
        assert _json(stopped)["success"] is True
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = _json(
                _flwr(env, "ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
            )
            if listed["runs"][0]["status"] != "running":
                break
            time.sleep(1)
    (run,) = listed["runs"]
    assert int(run["run-id"]) == run_id and run["status"] == "finished:stopped", listed


def test_secure_aggregation_counts_colluders_among_every_registered_site(tmp_path):
    """Rounds that sample some of the registered sites could hold every colluding one: the
    coordinator states the federation's size (unless the run does, or it resumes)."""
    keys = [tmp_path / f"site-{i}.pub" for i in range(5)]
    assert with_federation_size({}, keys) == {"secagg-federation-size": 5}
    assert with_federation_size({"secagg-federation-size": 9}, keys)["secagg-federation-size"] == 9
    assert "secagg-federation-size" not in with_federation_size({"resume": "r1"}, keys)
    assert with_federation_size({}, []) == {}  # --insecure registers no key
