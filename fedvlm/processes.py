"""Starting and stopping Flower's executables: ports, environment, process groups.

Shared by the simulation runner and the deployment launchers (coordinator, node), which all
start Flower processes that must never outlive the command that started them: each is put
in its own session (process group) and stopped by that group's id, children included.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import psutil

from fedvlm.flower_toml import connection_file_text
from fedvlm.settings_registry import Scope, setting

TORCH_THREADS = setting(
    "torch-threads",
    int,
    1,
    "CPU threads of a site's torch (`fedvlm node --torch-threads`).",
    scope=Scope.NODE,
    check=lambda v: v >= 1,
    expect=">= 1",
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def flower_executable(name: str) -> str:
    """Path of a Flower console script installed beside this Python (flwr, flower-*)."""
    return str(Path(sys.executable).parent / name)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(
    host: str, port: int, process: subprocess.Popen, log: Path, timeout: float
) -> None:
    """Wait until `process` listens on `host:port`; fail early if it exits instead."""
    name = Path(str(process.args[0] if isinstance(process.args, list) else process.args)).name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}; see {log}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not listen on {host}:{port} in {timeout:.0f}s; see {log}")


def start_process(
    command: list[str], env: dict[str, str], sink: IO[bytes] | None, cwd: Path = PROJECT_ROOT
) -> subprocess.Popen:
    """Start `command` in its own session so that `stop_process_group` can end it whole."""
    return subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=sink,
        stderr=subprocess.STDOUT if sink is not None else None,
        start_new_session=True,
    )


def stop_process_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process started with `start_new_session=True`, and every descendant.

    Flower detaches some of its helpers into sessions of their own (flower-superexec,
    flwr-serverapp, flwr-clientapp), so killing the group alone can leave them running;
    the descendants are therefore collected first and killed by PID if they outlive it.
    """
    descendants = _descendants(process.pid)
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
    _kill_group(process.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(descendants, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a launcher's `finally` stops what it started.

    Python's default SIGTERM action ends the process without unwinding, which would leave
    the Flower processes a launcher started (in sessions of their own) running.
    """

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def child_env(flwr_home: Path | None = None, threads: int = 1) -> dict[str, str]:
    """Environment for Flower's processes: offline, quiet, `threads` torch threads each.

    Runtime dependency installation is off: with torch among the dependencies, Flower's
    per-run `uv sync` would download gigabytes per run (docs/architecture.md).
    """
    env = dict(os.environ)
    env.update(
        {
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": str(threads),
            "CODECARBON_LOG_LEVEL": "error",
            "RAY_DEDUP_LOGS": "0",
            # Quiet the libraries so the per-round table stays readable.
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "PYTHONWARNINGS": "ignore::FutureWarning",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
            ),
            # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp)
            # by bare name, so they must be found beside this Python even if the venv is
            # not activated.
            "PATH": os.pathsep.join(
                p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p
            ),
        }
    )
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def write_connection(
    flwr_home: Path,
    name: str,
    address: str,
    *,
    root_certificates: Path | None = None,
) -> None:
    """Write a private `FLWR_HOME/config.toml` naming one SuperLink connection (default).

    Without `root_certificates` the connection is insecure (plain HTTP).
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    security: dict[str, str | bool] = (
        {"root-certificates": str(root_certificates)}
        if root_certificates is not None
        else {"insecure": True}
    )
    (flwr_home / "config.toml").write_text(
        connection_file_text(name, {"address": address, **security})
    )
