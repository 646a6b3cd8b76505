"""Run a scenario as a real Flower simulation: our own SuperLink, `flwr run`, clean stop.

`flwr run .` with the `:local:` address starts a SuperLink that outlives the run (NOTES.md),
and a user's main job must not leave a server behind. So this module starts
`flower-superlink --simulation` itself on free loopback ports, points a private `FLWR_HOME`
at it, submits the app with `flwr run --stream`, and stops the SuperLink's whole process
group afterwards, also on Ctrl-C or failure. Flower's per-run dependency installation is
disabled: with torch among the dependencies it would download gigabytes per run.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simulations.scenario import Scenario, toml_value

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONNECTION = "fedvlm-simulation"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode}; see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"flower-superlink did not listen on port {port} in {timeout:.0f}s")


def stop_process_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process started with `start_new_session=True`, children included."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def child_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower's processes: offline, quiet, one thread per process."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "CODECARBON_LOG_LEVEL": "error",
            "RAY_DEDUP_LOGS": "0",
            # Quiet the libraries so the per-round table stays readable.
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "PYTHONWARNINGS": "ignore::FutureWarning",
            # Flower's processes spawn each other by executable name (flower-superexec,
            # flwr-simulation...): the venv's bin must come first on PATH.
            "PATH": os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", ""))),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
            ),
        }
    )
    return env


@contextmanager
def simulation_superlink(flwr_home: Path, log_dir: Path) -> Iterator[str]:
    """Start a simulation SuperLink and register it as the `flwr` connection; yield its name."""
    # Flower 1.42 serves the Control, Runtime and Fleet APIs on one HTTP port.
    port = _free_port()
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    log = log_dir / "superlink.log"
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-file",
        str(log),
    ]
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            command,
            env=child_env(flwr_home),
            cwd=PROJECT_ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_port(port, process, log, timeout=60)
        yield CONNECTION
    finally:
        stop_process_group(process)


def run_scenario(
    scenario: Scenario, overrides: Mapping[str, Any] | None = None, run_dir: Path | None = None
) -> Path:
    """Simulate `scenario` through Flower's engine; return the run folder it produced.

    Raises RuntimeError when the run ended without its final adapter, pointing at the logs.
    """
    run_config = {**scenario.run_config, **(overrides or {})}
    run_root = (run_dir or PROJECT_ROOT / "runs").resolve()
    run_name = str(
        run_config.get("run-name") or f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run_config.update({"run-dir": str(run_root), "run-name": run_name})
    run_folder = run_root / run_name
    with tempfile.TemporaryDirectory(prefix="fedvlm-flwr-home-") as home:
        flwr_home = Path(home)
        overrides_file = flwr_home / "run-config.toml"
        overrides_file.write_text(
            "".join(f"{k} = {toml_value(v)}\n" for k, v in run_config.items())
        )
        with simulation_superlink(flwr_home, run_folder) as connection:
            result = subprocess.run(
                [
                    str(Path(sys.executable).parent / "flwr"),
                    "run",
                    str(PROJECT_ROOT),
                    connection,
                    "--stream",
                    "--run-config",
                    str(overrides_file),
                    "--federation-config",
                    " ".join(f"{k}={toml_value(v)}" for k, v in scenario.federation.items()),
                ],
                env=child_env(flwr_home),
                cwd=PROJECT_ROOT,
                check=False,
            )
    if result.returncode != 0 or not (run_folder / "adapter").is_dir():
        raise RuntimeError(
            f"simulation '{scenario.name}' did not finish (flwr run exit code "
            f"{result.returncode}); see the output above and {run_folder / 'superlink.log'}"
        )
    return run_folder
