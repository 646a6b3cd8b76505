"""Shared by the engine benchmarks: run a scenario through Flower's engine, timed and sampled.

`simulated_run` is what bench_scale and bench_overhead measure: the real
`fedvlm simulate` path (own SuperLink, `flwr run`, Ray actors), with a background
sampler of every process's RSS (simulations/memory.py) and the moments each ledger row
appeared, so engine start-up, the first round and the steady rounds can be told apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the project's packages live at the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulations.memory import (  # noqa: E402
    CLIENT_WORKER,
    SERVERAPP,
    MemorySampler,
    RoundMemory,
    ledger_rounds,
)
from simulations.runner import run_scenario  # noqa: E402
from simulations.scenario import Scenario  # noqa: E402

MB = 1e6


@contextlib.contextmanager
def output_to(log: Path | None) -> Iterator[None]:
    """Send this process's stdout and stderr, and its children's, to ``log`` (None: keep).

    File-descriptor level, because Flower's processes write to the inherited descriptors.
    """
    if log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@dataclasses.dataclass
class SimulatedRun:
    """Timings and memory of one simulated federation."""

    sites: int
    rows: list[dict[str, Any]]
    memory: RoundMemory
    wall: float

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """Ledger rows of the training rounds (round 0 is the initial evaluation)."""
        return [r for r in self.rows if r.get("round", 0) > 0 and "seconds" in r]

    @property
    def startup(self) -> float:
        """Seconds from the command to the round-0 row: SuperLink, `flwr run`, Ray start-up,
        ServerApp start and its model load, and the initial held-out evaluation."""
        return self.memory.round_seen_at[0]

    @property
    def teardown(self) -> float:
        """Seconds from the last row to the command's return (saving, Ray/SuperLink stop)."""
        return self.wall - self.memory.round_seen_at[max(self.memory.round_seen_at)]

    @property
    def first_round(self) -> float:
        """Round 1's seconds: includes starting the Ray actors and loading their model."""
        return self.rounds[0]["seconds"]

    @property
    def steady_round(self) -> float:
        """Median seconds of the rounds after the first."""
        later = [r["seconds"] for r in self.rounds[1:]] or [self.first_round]
        return statistics.median(later)

    @property
    def trained_per_round(self) -> float:
        """Mean number of sites whose update was aggregated per round."""
        return statistics.mean(len(r["sites"]) for r in self.rounds)

    @property
    def up_bytes_per_site(self) -> float:
        """Mean bytes a site uploads in one round."""
        return sum(r["bytes_up"] for r in self.rounds) / sum(len(r["sites"]) for r in self.rounds)

    @property
    def growth_window(self) -> int:
        """Rounds averaged at each end for `growth`: a quarter of the rounds, at least one."""
        return max(1, len(self.rounds) // 4)

    def growth(self, roles: tuple[str, ...] = (SERVERAPP, CLIENT_WORKER)) -> float:
        """Relative RSS change of ``roles``: last `growth_window` rounds vs the first ones."""
        return self.memory.trend(roles, self.growth_window)

    def peak_mb(self, role: str | None = None) -> float:
        """Peak RSS of one role, or of the whole process tree, in MB."""
        return (self.memory.peak_total if role is None else self.memory.peak[role]) / MB


def simulated_run(
    scenario: Scenario,
    *,
    sites: int | None = None,
    overrides: dict[str, Any] | None = None,
    log: Path | None = None,
    interval: float = 0.5,
) -> SimulatedRun:
    """Run ``scenario`` through Flower's engine, sampling memory; ``sites`` resizes it."""
    federation = dict(scenario.federation)
    run_config = dict(overrides or {})
    if sites is not None:
        federation["num-supernodes"] = sites
        run_config["min-available-nodes"] = sites
    scenario = dataclasses.replace(scenario, federation=federation)
    with tempfile.TemporaryDirectory(prefix="fedvlm-bench-") as tmp:
        name = f"{scenario.name}-{scenario.num_sites}"
        ledger = Path(tmp) / name / "ledger.jsonl"
        started = time.perf_counter()
        with output_to(log), MemorySampler(os.getpid(), ledger, interval) as sampler:
            run_scenario(scenario, {**run_config, "run-name": name}, Path(tmp))
        wall = time.perf_counter() - started
        rows = ledger_rounds(ledger)
    return SimulatedRun(scenario.num_sites, rows, sampler.result, wall)
