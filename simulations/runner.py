"""Run a scenario as a real Flower simulation: our own SuperLink, `flwr run`, clean stop.

`flwr run .` with the `:local:` address starts a SuperLink that outlives the run
(docs/architecture.md), and a user's main job must not leave a server behind. So this module starts
`flower-superlink --simulation` itself on free loopback ports, points a private `FLWR_HOME`
at it, submits the app with `flwr run --stream`, and stops the SuperLink's whole process
group afterwards, also on Ctrl-C or failure. Flower's per-run dependency installation is
disabled: with torch among the dependencies it would download gigabytes per run.
"""

import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedvlm.flower_toml import config_file_text, inline_config
from fedvlm.processes import (
    PROJECT_ROOT,
    child_env,
    flower_executable,
    free_port,
    start_process,
    stop_process_group,
    wait_for_port,
    write_connection,
)
from simulations.scenario import Scenario

CONNECTION = "fedvlm-simulation"


@contextmanager
def simulation_superlink(flwr_home: Path, log_dir: Path) -> Iterator[str]:
    """Start a simulation SuperLink and register it as the `flwr` connection; yield its name."""
    # Flower 1.42 serves the Control, Runtime and Fleet APIs on one HTTP port.
    port = free_port()
    write_connection(flwr_home, CONNECTION, f"127.0.0.1:{port}")
    log = log_dir / "superlink.log"
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [
        flower_executable("flower-superlink"),
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
        process = start_process(command, child_env(flwr_home), sink)
    try:
        wait_for_port("127.0.0.1", port, process, log, timeout=60)
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
    # Relative to where the user stands, as `fedvlm coordinator` does: the ServerApp runs
    # in a process Flower starts elsewhere, so the folder is made absolute here.
    run_root = (run_dir or Path(str(run_config.get("run-dir", "runs"))).expanduser()).resolve()
    run_name = str(
        run_config.get("run-name") or f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run_config.update({"run-dir": str(run_root), "run-name": run_name})
    run_folder = run_root / run_name
    with tempfile.TemporaryDirectory(prefix="fedvlm-flwr-home-") as home:
        flwr_home = Path(home)
        overrides_file = flwr_home / "run-config.toml"
        overrides_file.write_text(config_file_text(run_config))
        with simulation_superlink(flwr_home, run_folder) as connection:
            result = subprocess.run(
                [
                    flower_executable("flwr"),
                    "run",
                    str(PROJECT_ROOT),
                    connection,
                    "--stream",
                    "--run-config",
                    str(overrides_file),
                    "--federation-config",
                    inline_config(scenario.federation, "--federation-config"),
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
