"""Resident memory of a running simulation, per process role and per round.

A Flower simulation is a tree of processes under whoever started it: the SuperLink and
SuperExec, the `flwr-simulation` process (which runs the ServerApp and drives Ray), Ray's
own daemons (GCS, raylet, agents) and the Ray actors that run the ClientApp for every
virtual site. Whether 100 sites fit on one machine, and whether memory creeps up round
after round, is a question about the ServerApp and the actors, so samples are grouped by
role. Rounds are told apart by the run's ledger: a row is appended at the end of each
round, and the sampler takes a sample as soon as it sees one.
"""

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# Roles, matched against each process's command line, first match wins.
CLIENT_WORKER = "client-workers"  # Ray actors running the ClientApp (all sites' training)
SERVERAPP = "serverapp"  # flwr-simulation: the ServerApp (coordinator) and Ray's driver
RAY_RUNTIME = "ray-runtime"  # GCS, raylet, dashboard/runtime-env agents, idle Ray workers
FLOWER_CONTROL = "flower-control"  # SuperLink, SuperExec and the `flwr run` client
_ROLE_MARKERS = (
    (CLIENT_WORKER, ("ClientAppActor",)),
    (SERVERAPP, ("flwr-simulation",)),
    (RAY_RUNTIME, ("ray::", "/ray/", "raylet", "gcs_server")),
    (FLOWER_CONTROL, ("flower-superlink", "flower-superexec", "flwr run", "bin/flwr")),
)
ROLES = tuple(role for role, _ in _ROLE_MARKERS) + ("other",)


def role_of(cmdline: str) -> str:
    """The role of a process from its command line (``"other"`` when none matches)."""
    for role, markers in _ROLE_MARKERS:
        if any(marker in cmdline for marker in markers):
            return role
    return "other"


@dataclass(frozen=True)
class MemorySample:
    """RSS in bytes per role at one instant, and the processes of each role."""

    seconds: float
    rss: dict[str, int]
    processes: dict[str, int]

    @property
    def total(self) -> int:
        """RSS summed over every process of the tree."""
        return sum(self.rss.values())

    def of(self, roles: Iterable[str]) -> int:
        """RSS summed over the given roles."""
        return sum(self.rss.get(role, 0) for role in roles)


def sample_tree(root_pid: int, started: float = 0.0) -> MemorySample:
    """RSS of every descendant of ``root_pid`` (not the root itself), grouped by role.

    Processes that exit while being read are skipped: a tree under construction or
    teardown is still a valid sample of what is alive.
    """
    rss = dict.fromkeys(ROLES, 0)
    count = dict.fromkeys(ROLES, 0)
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for proc in children:
        try:
            role = role_of(" ".join(proc.cmdline()) or proc.name())
            rss[role] += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        count[role] += 1
    return MemorySample(time.perf_counter() - started, rss, count)


def ledger_rounds(ledger: Path) -> list[dict]:
    """The rows of a run's ledger written so far (a partly written last line is left out)."""
    if not ledger.is_file():
        return []
    rows = []
    for line in ledger.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


@dataclass
class RoundMemory:
    """What `MemorySampler` saw: one sample per ledger row, the peak, the timeline."""

    per_round: dict[int, MemorySample] = field(default_factory=dict)
    round_seen_at: dict[int, float] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    peak_total: int = 0
    samples: int = 0

    def growth(self, roles: Iterable[str], first: int, last: int) -> float:
        """Relative RSS change of ``roles`` from the end of round ``first`` to ``last``."""
        roles = tuple(roles)
        before = self.per_round[first].of(roles)
        return (self.per_round[last].of(roles) - before) / before

    def trend(self, roles: Iterable[str], window: int) -> float:
        """Relative RSS change of ``roles``: mean of the last ``window`` rounds vs the first.

        Rounds from 1 (round 0 is before any site trained). Averaging a few rounds at each
        end keeps one sample's noise (a garbage collection, a site's data being generated)
        from passing for growth or for its absence.
        """
        roles = tuple(roles)
        values = [self.per_round[r].of(roles) for r in sorted(self.per_round) if r >= 1]
        if window < 1 or len(values) < window:
            raise ValueError(f"need at least {window} rounds, have {len(values)}")
        first, last = values[:window], values[-window:]
        return sum(last) / sum(first) - 1


class MemorySampler:
    """Sample the RSS of a process tree in a background thread while a run is going on.

    Every ``interval`` seconds it samples the tree (for the peak), and whenever the run's
    ledger has grown it takes the sample of the round that just ended. Use as a context
    manager around the blocking call that runs the simulation.
    """

    def __init__(self, root_pid: int, ledger: Path, interval: float = 0.5) -> None:
        self.root_pid = root_pid
        self.ledger = ledger
        self.interval = interval
        self.result = RoundMemory()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._started = 0.0

    def __enter__(self) -> "MemorySampler":
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            rows = ledger_rounds(self.ledger)
            sample = sample_tree(self.root_pid, self._started)
            self._record(sample, rows)
            self._stop.wait(self.interval)

    def _record(self, sample: MemorySample, rows: list[dict]) -> None:
        result = self.result
        result.samples += 1
        for role, value in sample.rss.items():
            result.peak[role] = max(result.peak.get(role, 0), value)
        result.peak_total = max(result.peak_total, sample.total)
        for row in rows:
            number = int(row.get("round", -1))
            if number >= 0 and number not in result.per_round:
                result.per_round[number] = sample
                result.round_seen_at[number] = sample.seconds
