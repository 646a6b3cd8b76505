"""Deployment helpers shared by the deployed tests: credentials and site folders on disk,
`fedvlm coordinator` / `fedvlm node` processes started in their own sessions and stopped by PID
(with their descendants) in a fixture's `finally`, also when a test fails.

A plain module, not a test module: test modules never import each other.
"""

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest

from fedvlm.credentials import make_credentials
from fedvlm.data.imagefolder import write_imagefolder
from fedvlm.data.partition import synthetic_site
from fedvlm.processes import child_env, start_process, stop_process_group

SITES = ("site-a", "site-b")
THREE_SITES = (*SITES, "site-c")  # the dropout test: min-available-nodes = every site
RUN_CONFIG = {
    "num-server-rounds": 2,
    "local-steps": 1,
    "batch-size": 4,
    "heldout-examples": 8,
    "round-timeout": 120.0,
    "min-train-nodes": 2,
    "min-available-nodes": 2,
    "seed": 0,
}
RUN_TIMEOUT = 300.0


class Processes:
    """Processes a test started; `stop_all` ends each by PID, children included."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str]) -> tuple[subprocess.Popen, Path]:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as sink:
            process = start_process(args, child_env(), sink)
        self.started.append(process)
        return process, log

    def sigkill_tree(self, process: subprocess.Popen) -> None:
        """SIGKILL a launcher and everything below it, as a crashed host would."""
        tree = psutil.Process(process.pid).children(recursive=True)
        process.kill()
        process.wait()
        for child in tree:
            with suppress(psutil.Error):
                child.kill()

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop_process_group(process, grace=5)


@contextmanager
def process_scope(log_dir: Path) -> Iterator[Processes]:
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def processes(tmp_path) -> Iterator[Processes]:
    with process_scope(tmp_path) as procs:
        yield procs


@pytest.fixture(scope="module")
def federation_files(tmp_path_factory):
    """Credentials for three sites and an intruder, and each site's image folder.

    Most tests register the first two (`SITES`); the dropout test all three.
    """
    root = tmp_path_factory.mktemp("federation")
    creds = make_credentials(root / "credentials", sites=[*THREE_SITES, "intruder"])
    folders = {}
    for index, site in enumerate(THREE_SITES):
        data = synthetic_site(
            index % 2, 2, n_train=8, n_val=4, label_alpha=0.5, acquisition_skew=0.5, seed=index // 2
        )
        folders[site] = write_imagefolder(
            {"train": data.train, "validation": data.val}, root / f"{site}-images"
        )
    return creds, folders


def fedvlm(*args: str) -> list[str]:
    """The installed `fedvlm` console script with ``args``, exactly as a user runs it."""
    return [str(Path(sys.executable).parent / "fedvlm"), *args]


def coordinator_args(
    creds, state_dir: Path, port: int, run_dir: Path, sites=SITES, **extra
) -> list[str]:
    config = {**RUN_CONFIG, "run-dir": str(run_dir), **extra}
    args = [
        "coordinator",
        "--credentials",
        str(creds.folder),
        "--state-dir",
        str(state_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for site in sites:
        args += ["--site-key", str(creds.site_keys[site][1])]
    for key, value in config.items():
        args += ["--run-config", f"{key}={json.dumps(value)}"]
    return fedvlm(*args)


def node_args(creds, folders, site: str, port: int, *node_config: str) -> list[str]:
    """`fedvlm node` for ``site``; ``node_config`` adds `key=value` site settings."""
    extra = [arg for pair in node_config for arg in ("--node-config", pair)]
    return fedvlm(
        "node",
        "--superlink",
        f"127.0.0.1:{port}",
        "--data",
        str(folders[site]),
        "--ca-cert",
        str(creds.ca_cert),
        "--private-key",
        str(creds.site_keys[site][0]),
        *extra,
    )


def wait_for(predicate, timeout: float, what: str, *watch: subprocess.Popen) -> None:
    """Poll `predicate`; fail early (with the reason) if a watched process has exited."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for process in watch:
            if process.poll() is not None and not predicate():
                pytest.fail(f"{process.args[:4]} exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def registered(log: Path, sites=SITES) -> bool:
    return log.exists() and all(f"site {s}: node" in log.read_text() for s in sites)


def port_open(port: int) -> bool:
    return any(c.laddr.port == port and c.status == "LISTEN" for c in psutil.net_connections())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_nodes(
    processes: Processes, creds, folders, port: int, sites=SITES, node_config=()
) -> list[subprocess.Popen]:
    return [
        processes.start(f"node-{site}", node_args(creds, folders, site, port, *node_config))[0]
        for site in sites
    ]


def descendants_running(pid: int, program: str) -> list[psutil.Process]:
    """The live descendants of `pid` whose command line runs `program` (e.g. flwr-clientapp).

    A descendant that just ended is a zombie or gone: skipped, not an error.
    """
    found = []
    for process in psutil.Process(pid).children(recursive=True):
        with suppress(psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            if program in " ".join(process.cmdline()):
                found.append(process)
    return found
