"""Start a deployed federation from the coordinator host with one command.

What it does, in Flower's own terms (each command is echoed, so the plain Flower way is
always visible):

1. ``flower-superlink`` with TLS (``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``),
   SuperNode authentication (``--enable-supernode-auth``), state in a database file
   (``--database``, so registered nodes survive a restart) and Flower's per-run
   dependency installation off (it would ``uv sync`` torch for every run);
2. ``flwr supernode register <site>.pub`` for every site public key (idempotent: a key
   the database already knows is reported, not an error);
3. ``flwr run <project> --stream --run-config <file>`` with the chosen run config;
4. stops the SuperLink it started (unless asked to keep it running for more runs).

The wrapper adds what five manual commands lack: the files are checked before anything
starts, the ``flwr`` CLI gets a private connection profile, the run folder is made absolute
(the ServerApp runs in another working directory), and nothing is left running.
"""

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coordinator.checkpoint import CHECKPOINT
from coordinator.ledger import read_ledger
from fedvlm.credentials import CA_CERT, SERVER_CERT, SERVER_KEY, require_private
from fedvlm.errors import FedVLMError
from fedvlm.flower_toml import config_file_text
from fedvlm.processes import (
    PROJECT_ROOT,
    child_env,
    exit_on_sigterm,
    flower_executable,
    start_process,
    stop_process_group,
    wait_for_port,
    write_connection,
)
from privacy.secagg.settings import FEDERATION_SIZE

CONNECTION = "fedvlm-deployment"
DEFAULT_PORT = 8000  # Flower's own default for the SuperLink
INSECURE_WARNING = (
    "WARNING: --insecure: the SuperLink runs WITHOUT TLS and WITHOUT node authentication. "
    "Adapters and metrics travel in clear text and any machine that reaches the port can "
    "join as a site. Use this only on a trusted loopback or lab network."
)


@dataclass(frozen=True)
class CoordinatorOptions:
    """How to start the SuperLink and the run (validated by `check`).

    Attributes
    ----------
    credentials : Path or None
        Folder with ``ca.crt``, ``server.crt``, ``server.key`` (from ``fedvlm credentials``).
    site_keys : list of Path
        Site public keys to register (``<site>.pub``); the site's name is the file stem.
    state_dir : Path
        Where the SuperLink keeps ``superlink.db``, its log and the CLI profile.
    host, port : str, int
        Address the SuperLink listens on (``0.0.0.0`` to accept remote sites).
    run_config : dict
        Run-config overrides (TOML scalars), as ``flwr run --run-config`` takes them.
    insecure : bool
        No TLS, no node authentication (prints a warning).
    keep_running : bool
        Leave the SuperLink running after the run (for further runs or inspection).
    project : Path
        The Flower app (folder with ``pyproject.toml``) that ``flwr run`` submits.
    """

    credentials: Path | None
    site_keys: list[Path]
    state_dir: Path
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    run_config: dict[str, Any] = field(default_factory=dict)
    insecure: bool = False
    keep_running: bool = False
    project: Path = PROJECT_ROOT

    def check(self) -> None:
        """Refuse to start on missing or contradictory inputs, naming the file or flag."""
        if self.insecure:
            if self.site_keys:
                raise FedVLMError(
                    "--insecure cannot register --site-key: node authentication needs TLS"
                )
        else:
            if self.credentials is None:
                raise FedVLMError(
                    "--credentials FOLDER is required (ca.crt, server.crt, server.key from "
                    "`fedvlm credentials`); use --insecure only on a trusted network"
                )
            for name in (CA_CERT, SERVER_CERT, SERVER_KEY):
                if not (self.credentials / name).is_file():
                    raise FedVLMError(f"--credentials: {self.credentials / name} does not exist")
            require_private(self.credentials / SERVER_KEY, "--credentials")
            if not self.site_keys:
                raise FedVLMError(
                    "no --site-key given: with node authentication no site could join"
                )
        for key in self.site_keys:
            if not key.is_file():
                raise FedVLMError(f"--site-key: {key} does not exist")
        if not (self.project / "pyproject.toml").is_file():
            raise FedVLMError(f"--project: {self.project / 'pyproject.toml'} does not exist")


def _echo(command: Sequence[str]) -> None:
    print("+ " + shlex.join(command), flush=True)


def superlink_command(opts: CoordinatorOptions, log: Path) -> list[str]:
    """The `flower-superlink` command line for these options."""
    command = [flower_executable("flower-superlink")]
    if opts.insecure:
        command.append("--insecure")
    else:
        assert opts.credentials is not None
        command += [
            "--ssl-ca-certfile",
            str(opts.credentials / CA_CERT),
            "--ssl-certfile",
            str(opts.credentials / SERVER_CERT),
            "--ssl-keyfile",
            str(opts.credentials / SERVER_KEY),
            "--enable-supernode-auth",
        ]
    return command + [
        "--database",
        str(opts.state_dir / "superlink.db"),
        "--disable-runtime-dependency-installation",
        "--host",
        opts.host,
        "--port",
        str(opts.port),
        "--log-file",
        str(log),
    ]


def _local_address(opts: CoordinatorOptions) -> str:
    """Where this host's `flwr` CLI reaches the SuperLink (the server cert covers loopback)."""
    host = "127.0.0.1" if opts.host in ("0.0.0.0", "::", "") else opts.host
    return f"{host}:{opts.port}"


@contextmanager
def running_superlink(opts: CoordinatorOptions) -> Iterator[dict[str, str]]:
    """Start the SuperLink, yield the environment its `flwr` CLI calls need, stop it after."""
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    flwr_home = opts.state_dir / "flwr-home"
    write_connection(
        flwr_home,
        CONNECTION,
        _local_address(opts),
        root_certificates=None if opts.insecure else opts.credentials / CA_CERT,
    )
    env = child_env(flwr_home)
    log = opts.state_dir / "superlink.log"
    command = superlink_command(opts, log)
    _echo(command)
    with open(opts.state_dir / "superlink.out", "ab") as sink:
        process = start_process(command, env, sink)
    print(f"fedvlm: SuperLink PID {process.pid}, log {log}", flush=True)
    keep = False
    try:
        host, port = _local_address(opts).rsplit(":", 1)
        wait_for_port(host, int(port), process, log, timeout=60)
        yield env
        keep = opts.keep_running
    finally:
        if keep:
            print(
                f"fedvlm: SuperLink left running (PID {process.pid}); stop it with "
                f"`kill -TERM -{process.pid}`",
                flush=True,
            )
        else:
            stop_process_group(process)


def register_site_keys(keys: Sequence[Path], env: Mapping[str, str]) -> dict[str, str]:
    """Register each public key with `flwr supernode register`; return site -> node id.

    A key the SuperLink's database already holds (a restarted coordinator) is not an
    error; its node id is looked up instead.
    """
    registered: dict[str, str] = {}
    for key in keys:
        command = [
            flower_executable("flwr"),
            "supernode",
            "register",
            str(key),
            CONNECTION,
            "--name",
            key.stem,
            "--format",
            "json",
        ]
        _echo(command)
        result = subprocess.run(command, env=dict(env), capture_output=True, text=True)
        reply = _json_reply(result.stdout)
        if reply.get("success"):
            registered[key.stem] = str(reply["node-id"])
        elif "already in use" in str(reply.get("error-message", "")):
            registered[key.stem] = "already registered"
        else:
            raise FedVLMError(
                f"registering {key} failed: {reply.get('error-message') or result.stderr.strip()}"
            )
    return registered


def _json_reply(stdout: str) -> dict[str, Any]:
    """The JSON object `flwr ... --format json` prints (after any informational lines)."""
    start = stdout.find("{")
    try:
        return json.loads(stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}


def submit_run(opts: CoordinatorOptions, env: Mapping[str, str]) -> int:
    """`flwr run --stream` with the run config; return flwr's exit code."""
    config_file = opts.state_dir / "run-config.toml"
    config_file.write_text(config_file_text(opts.run_config))
    command = [
        flower_executable("flwr"),
        "run",
        str(opts.project),
        CONNECTION,
        "--stream",
        "--run-config",
        str(config_file),
    ]
    _echo(command)
    return subprocess.run(command, env=dict(env), cwd=opts.project, check=False).returncode


def with_run_folder(run_config: Mapping[str, Any], cwd: Path) -> tuple[dict[str, Any], Path]:
    """Make `run-dir` absolute and `run-name` explicit, so the run folder is known here.

    The ServerApp runs in a process Flower starts elsewhere; a relative `run-dir` would land
    in that process's working directory, not the operator's. A `resume` value that names a
    folder is made absolute for the same reason, and the run continues in that folder.
    """
    config = dict(run_config)
    resume = str(config.get("resume", ""))
    if resume:
        folder = Path(resume).expanduser()
        folder = folder if folder.is_absolute() else (cwd / folder)
        if not folder.is_dir():
            folder = (cwd / str(config.get("run-dir", "runs")) / resume).resolve()
        config["resume"] = str(folder.resolve())
        return config, folder.resolve()
    run_dir = (cwd / Path(str(config.get("run-dir", "runs"))).expanduser()).resolve()
    run_name = str(config.get("run-name") or time.strftime("deploy-%Y%m%d-%H%M%S"))
    config.update({"run-dir": str(run_dir), "run-name": run_name})
    return config, run_dir / run_name


def with_federation_size(run_config: Mapping[str, Any], site_keys: Sequence[Path]) -> dict:
    """Count secure aggregation's colluders among every registered site, unless told otherwise.

    The registered sites are the federation. A round that samples only some of them could hold
    every colluding one, so γ must count them all (``secagg-federation-size``); with every site
    sampled this changes nothing. A resumed run keeps the settings it started with.
    """
    config = dict(run_config)
    if site_keys and FEDERATION_SIZE.key not in config and not config.get("resume"):
        config[FEDERATION_SIZE.key] = len(site_keys)
    return config


def run_coordinator(opts: CoordinatorOptions) -> Path:
    """Start the SuperLink, register the sites, run the federation; return the run folder.

    Raises
    ------
    FedVLMError
        On missing files or a failed registration (before any run starts).
    RuntimeError
        When the run ended without its final adapter (flwr's exit code and logs named).
    """
    exit_on_sigterm()
    opts.check()
    if opts.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    run_config = with_federation_size(opts.run_config, opts.site_keys)
    run_config, run_folder = with_run_folder(run_config, Path.cwd())
    opts = replace(opts, run_config=run_config)
    with running_superlink(opts) as env:
        for site, node_id in register_site_keys(opts.site_keys, env).items():
            print(f"fedvlm: site {site}: node {node_id}", flush=True)
        code = submit_run(opts, env)
    if code != 0 or not (run_folder / "adapter").is_dir():
        hint = (
            f"; continue it with --resume {run_folder}"
            if (run_folder / CHECKPOINT).is_file()
            else ""
        )
        rows = read_ledger(run_folder)
        reason = rows[-1].get("stopped") if rows else None
        raise RuntimeError(
            (f"{reason}\n" if reason else "")
            + f"the run did not finish (flwr run exit code {code}); see the output above, "
            f"{opts.state_dir / 'superlink.log'} and {run_folder}{hint}"
        )
    return run_folder
