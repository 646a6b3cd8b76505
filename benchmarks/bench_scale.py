"""Sites simulated vs peak memory and seconds per round, through Flower's simulation engine.

Each row is one real `fedvlm simulate` run of simulations/scenarios/scale-100.toml resized to
N sites (the same fraction of sites trains each round, so 10% of N, at least 5). A background
thread samples the RSS of every process the run starts (simulations/memory.py), grouped by
role, and takes one sample at the end of each round (when its ledger row appears). "growth"
is the RSS change of the ServerApp and the Ray actors (ClientApps): the mean of the last
quarter of the rounds against the mean of the first quarter (rounds 16-20 vs 1-5 of 20; round 0
is before any site trained). Engine start-up (SuperLink, `flwr run`,
Ray, ServerApp model load, initial evaluation) is reported apart from the rounds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py     # 10/50/100 sites, 20 rounds
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py --sites 100 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import SimulatedRun, simulated_run  # noqa: E402

from simulations.memory import CLIENT_WORKER, SERVERAPP  # noqa: E402
from simulations.scenario import Scenario  # noqa: E402

SCENARIO = "scale-100"
HEADER = (
    "| sites | trained/round | engine start-up s | round 1 s | s/round (later) | "
    "peak RSS all MB | ServerApp MB | Ray actors MB (n) | growth first→last |"
)


def measure(sites: list[int], rounds: int, log: Path | None = None) -> list[SimulatedRun]:
    """One simulated run of the scale scenario per entry of ``sites``, ``rounds`` rounds each."""
    scenario = Scenario.load(SCENARIO)
    return [
        simulated_run(scenario, sites=n, overrides={"num-server-rounds": rounds}, log=log)
        for n in sites
    ]


def row(run: SimulatedRun) -> str:
    """The table line of one run."""
    actors = max(s.processes[CLIENT_WORKER] for s in run.memory.per_round.values())
    return (
        f"| {run.sites:5d} | {run.trained_per_round:13.1f} | {run.startup:17.1f} | "
        f"{run.first_round:9.1f} | {run.steady_round:15.2f} | {run.peak_mb():15.0f} | "
        f"{run.peak_mb(SERVERAPP):12.0f} | {run.peak_mb(CLIENT_WORKER):13.0f} ({actors}) | "
        f"{run.growth():+17.2%} |"
    )


def per_round_lines(run: SimulatedRun) -> list[str]:
    """RSS of the ServerApp and of the Ray actors at the end of every round of one run."""
    lines = [f"RSS at the end of each round, {run.sites} sites (MB):"]
    for label, role in (("ServerApp ", SERVERAPP), ("Ray actors", CLIENT_WORKER)):
        values = [
            f"{sample.rss[role] / 1e6:.0f}" for _, sample in sorted(run.memory.per_round.items())
        ]
        lines.append(f"  {label} r0..r{len(values) - 1}: " + " ".join(values))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--log", type=Path, default=Path("bench_scale.log"), help="Flower output")
    args = parser.parse_args()
    runs = measure(args.sites, args.rounds, args.log)
    print(f"\nScale ({SCENARIO}.toml resized, {args.rounds} rounds, Flower's simulation engine)\n")
    print(HEADER)
    print("|" + "|".join("-" * len(c) for c in HEADER.strip("|").split("|")) + "|")
    for run in runs:
        print(row(run))
    print()
    for run in runs:
        print("\n".join(per_round_lines(run)))


if __name__ == "__main__":
    main()
