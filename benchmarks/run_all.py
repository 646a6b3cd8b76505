"""Every benchmark of the platform in one run, printed as one table of ratios.

Each figure is measured in this run, side by side with its reference (ratios, never
absolute claims carried over from another machine), and printed with how it was measured.
Benchmarks that expose functions are imported (bench_overhead, bench_scale, bench_utility,
bench_secagg, fedvlm.presets); the others run as subprocesses with ``--json PATH`` and their
figures are read from that file (bench_energy, bench_dp, bench_secagg_scale,
bench_deploy); no printed table is scraped.
Flower's and Ray's output goes to a log file.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_all.py --quick            # <= 15 min, 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_all.py --save benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_overhead  # noqa: E402
import bench_scale  # noqa: E402
import bench_secagg  # noqa: E402
import bench_utility  # noqa: E402
from harness import SimulatedRun, output_to  # noqa: E402

from fedvlm.presets import adapter_bytes, load_presets, model_bytes  # noqa: E402
from privacy.secagg import SecAggConfig  # noqa: E402


@dataclass(frozen=True)
class Figure:
    """One row of the table."""

    number: int
    name: str
    value: str
    how: str


@dataclass(frozen=True)
class Sizes:
    """How long each part runs: --quick or the full default."""

    overhead_rounds: int
    overhead_blocks: int
    secagg_rounds: int
    secagg_order: tuple[bool, ...]  # False: plain, True: secure; run in this order
    secagg_scale_args: tuple[str, ...]
    dp_args: tuple[str, ...]
    energy_args: tuple[str, ...]
    scale_sites: tuple[int, ...]
    scale_rounds: int
    utility_sites: int
    utility_rounds: int
    deploy_args: tuple[str, ...]


QUICK = Sizes(
    overhead_rounds=6,
    overhead_blocks=1,
    secagg_rounds=3,
    secagg_order=(False, True, True, False),  # ABBA: load drift hits both alike
    secagg_scale_args=("--representatives", "1"),
    dp_args=("--repeats", "3", "--steps", "4"),
    energy_args=("--repeats", "5"),
    scale_sites=(10, 50, 100),
    scale_rounds=5,
    utility_sites=4,
    utility_rounds=10,
    deploy_args=("--rounds", "3"),
)
FULL = Sizes(
    overhead_rounds=8,
    overhead_blocks=2,
    secagg_rounds=4,
    secagg_order=(False, True, True, False),
    secagg_scale_args=("--representatives", "3"),
    dp_args=("--repeats", "5", "--steps", "6"),
    energy_args=("--repeats", "9"),
    scale_sites=(10, 50, 100),
    scale_rounds=20,
    utility_sites=4,
    utility_rounds=16,
    deploy_args=("--rounds", "5"),
)


def script_output(name: str, args: tuple[str, ...]) -> str:
    """Run benchmarks/<name> as a subprocess (one torch thread); return its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def script_json(name: str, args: tuple[str, ...], log: Path) -> dict:
    """Run a benchmark script with ``--json`` and read its figures back (its table to `log`).

    The scripts print tables for people and write JSON for this script, so nothing here
    depends on the layout of a printed table.
    """
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "figures.json"
        out = script_output(name, (*args, "--json", str(target)))
        with open(log, "a") as sink:
            sink.write(out)
        return json.loads(target.read_text())


def overhead_and_bytes(sizes: Sizes, log: Path) -> list[Figure]:
    """Figures 1 and 2: FL overhead and bytes per site per round."""
    result = bench_overhead.measure(4, sizes.overhead_rounds, sizes.overhead_blocks, log)
    sim = result.simulated
    alone = statistics.median(result.alone)
    in_round = statistics.median(result.in_round)
    setup = (
        "4 sites x 16 local steps, every site every round, one Ray actor, fed. eval and "
        f"energy tracking off; rounds 2..{len(sim.rounds)} of a `fedvlm simulate` run"
    )
    presets = load_presets()
    ratios = {
        p.name: model_bytes(p)
        / adapter_bytes(p, p.recommended["rank"], p.recommended["train_projector"])
        for p in presets
    }
    return [
        Figure(
            1,
            "FL overhead: round wall time / its training + evaluation (goal <= 1.05)",
            f"{in_round:.3f}x (rounds: {min(result.in_round):.3f} .. {max(result.in_round):.3f})",
            f"{setup}; per round, ledger seconds / the seconds the sites spent in their train "
            "handlers + the coordinator's aggregation and held-out evaluation (energy-meter "
            "durations); median over rounds. Interleaved by construction",
        ),
        Figure(
            1,
            "  same, vs the work alone in a separate process",
            f"{result.ratio:.3f}x ({sim.steady_round:.2f} s / {alone:.2f} s; alone "
            f"{min(result.alone):.2f} .. {max(result.alone):.2f} s)",
            f"{setup}; median round / median of {len(result.alone)} rounds of the same "
            "training + held-out evaluation in this process without Flower, run before and "
            "after the simulation (cannot interleave: sensitive to load drift)",
        ),
        Figure(
            1,
            "  engine start-up (not in rounds)",
            f"{sim.startup:.1f} s + round 1 {sim.first_round:.1f} s "
            f"(vs {sim.steady_round:.2f} s later); teardown {sim.teardown:.1f} s",
            "to the round-0 ledger row: SuperLink, `flwr run`, Ray start, ServerApp model "
            "load, initial held-out evaluation; round 1 also starts the Ray actor and loads "
            "its model",
        ),
        Figure(
            2,
            "bytes per site per round, embedded tiny model",
            f"{sim.up_bytes_per_site / 1e3:.1f} kB vs full model "
            f"{result.full_model_bytes / 1e3:.0f} kB "
            f"({result.full_model_bytes / sim.up_bytes_per_site:.1f}x less)",
            "upload of the same run (ledger bytes_up / sites) vs the base model's "
            "state_dict bytes as stored (float32); rank 8 + trained projector",
        ),
        Figure(
            2,
            "bytes per site per round, real presets (recommended settings)",
            ", ".join(f"{name} {ratio:.0f}x" for name, ratio in ratios.items()),
            "computed from the checkpoints' config dims (fedvlm/presets, "
            "bench_adapter_sizes.py): bf16 model bytes / float32 adapter upload",
        ),
    ]


def secure_aggregation(sizes: Sizes, log: Path) -> list[Figure]:
    """Figure 3: upload expansion of the protocol and the round-time ratio in simulation."""
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-1.2, 1.2, 1_000_000).astype(np.float32) for _ in range(10)]
    protocol = bench_secagg.ours(updates, SecAggConfig(num_clients=10, clip=1.0))
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with output_to(log):
        for secure in sizes.secagg_order:
            runs[secure].append(bench_secagg.simulated_round(secure, 4, sizes.secagg_rounds, 4))

    def median(secure: bool, key: str) -> float:
        return statistics.median(r[key] for r in runs[secure])

    order = ", ".join("secure" if s else "plain" for s in sizes.secagg_order)
    return [
        Figure(
            3,
            "secure aggregation: upload expansion",
            f"{protocol['upload']:.3f}x (protocol, 10 clients, 1M params); "
            f"{median(True, 'bytes_up') / median(False, 'bytes_up'):.3f}x (simulated run)",
            "masked upload bytes / float32 update bytes: bench_secagg.ours (one dropout) and "
            "the ledger bytes_up of the simulated runs below",
        ),
        Figure(
            3,
            "secure aggregation: round time secure / plain",
            f"{median(True, 'round_s') / median(False, 'round_s'):.2f}x "
            f"({median(True, 'round_s'):.2f} s / {median(False, 'round_s'):.2f} s)",
            f"bench_secagg.simulated_round: 4 sites x 4 local steps, {sizes.secagg_rounds} "
            f"rounds per `fedvlm simulate` run, median round; runs in order {order}",
        ),
    ]


def secure_aggregation_scale(sizes: Sizes, log: Path) -> list[Figure]:
    """Figure 3: SecAgg+ alone at 100, 1,000 and 10,000 clients (bench_secagg_scale.py)."""
    rows = script_json("bench_secagg_scale.py", sizes.secagg_scale_args, log)

    def each(key: str, fmt: str, scale: float = 1.0) -> str:
        return " / ".join(format(r[key] / scale if scale != 1.0 else r[key], fmt) for r in rows)

    def growth(*keys: str) -> float:
        return sum(rows[-1][k] for k in keys) / sum(rows[0][k] for k in keys)

    value = (
        f"n = {each('n', ',')}; k = {each('degree', 'd')}, t = {each('threshold', 'd')}: "
        f"per client {each('client_seconds', '.3f')} s ({growth('client_seconds'):.1f}x from "
        f"first to last n), up {each('client_up_bytes', '.0f', 1e3)} kB, down "
        f"{each('client_down_bytes', '.0f', 1e3)} kB "
        f"({growth('client_up_bytes', 'client_down_bytes'):.1f}x up and down together); "
        f"coordinator unmask {each('unmask_seconds', '.2f')} s"
    )
    how = (
        f"bench_secagg_scale.py {' '.join(sizes.secagg_scale_args)}: protocol alone, "
        f"{rows[0]['params']:,} parameters, degree and threshold derived from the default threat "
        "model, no dropouts; per client = median over representative clients driven through the "
        "six stages by SecAggClient against an n-client round (sampled list, committed set and "
        "graph-seed reveals of n; survivors and certified signatures of its neighbourhood), "
        "handler seconds summed and "
        "payload bytes; unmask = rebuilding n "
        "self-mask seeds from t shares and removing n self-masks"
    )
    return [Figure(3, "secure aggregation: scaling (protocol alone)", value, how)]


def dp_step(sizes: Sizes, log: Path) -> list[Figure]:
    """Figure 4: DP-SGD step time / plain step time (bench_dp): what fedvlm runs, Opacus'
    hooks with the noise from the CSPRNG, and Opacus' hooks alone."""
    seconds = script_json("bench_dp.py", ("--skip-accuracy", *sizes.dp_args), log)["step_seconds"]
    hooks, fedvlm, plain = seconds["hooks"], seconds["hooks+csprng"], seconds["non-DP"]
    for mode, value in (("hooks", hooks), ("hooks+csprng", fedvlm)):
        if isinstance(value, str):
            raise RuntimeError(f"bench_dp.py: Opacus {mode} mode failed: {value}")
    return [
        Figure(
            4,
            "DP-SGD step / plain step (what fedvlm runs: Opacus hooks, CSPRNG noise)",
            f"{fedvlm / plain:.2f}x ({fedvlm:.3f} s / {plain:.3f} s); Opacus hooks alone "
            f"{hooks / plain:.2f}x",
            f"bench_dp.py {' '.join(sizes.dp_args)}: embedded model, batch 8, interleaved "
            "blocks of DP and non-DP steps, medians",
        ),
    ]


def energy(sizes: Sizes, log: Path) -> list[Figure]:
    """Figure 5: a client round with energy tracking / without (bench_energy)."""
    figures = script_json("bench_energy.py", sizes.energy_args, log)
    return [
        Figure(
            5,
            f"energy tracking overhead, % of round time (target < {figures['target_pct']:g}%)",
            f"{figures['overhead_pct']:.2f}% ({figures['measurement_ms']:.1f} ms per "
            f"measurement, 2 per {figures['plain_s']:.2f} s round; + {figures['startup_s']:.1f} s "
            f"once per process); paired rounds with / without {figures['ratio']:.3f}x "
            f"({figures['ratio_min']:.3f} .. {figures['ratio_max']:.3f})",
            f"bench_energy.py {' '.join(sizes.energy_args)}: train + evaluate of a "
            "client-sized model, each wrapped in EnergyMeter.measure(); overhead = 2 x the "
            "median cost of a measurement / the median untracked round; pairs alternate, "
            "median ratio",
        ),
    ]


def scale(sizes: Sizes, log: Path) -> list[Figure]:
    """Figure 6: sites simulated vs peak RSS and seconds per round."""
    runs = bench_scale.measure(list(sizes.scale_sites), sizes.scale_rounds, log)
    return [
        Figure(
            6,
            f"{run.sites} sites simulated",
            f"peak RSS {run.peak_mb() / 1e3:.2f} GB (ServerApp {run.peak_mb('serverapp'):.0f} "
            f"MB, Ray actors {run.peak_mb('client-workers'):.0f} MB); "
            f"{run.steady_round:.2f} s/round for {run.trained_per_round:.0f} sites trained; "
            f"RSS growth {run.growth():+.2%} ({growth_span(run)})",
            f"scale-100.toml with {run.sites} sites, {sizes.scale_rounds} rounds: RSS of "
            "every process of the run sampled every 0.5 s and at each round's ledger row; "
            "growth = ServerApp + actors, mean of the last quarter of rounds vs the first "
            "quarter; s/round = median "
            "of rounds after the first",
        )
        for run in runs
    ]


def growth_span(run: SimulatedRun) -> str:
    """Which rounds the growth figure compares, e.g. "rounds 1-5 -> 16-20"."""
    window, last = run.growth_window, len(run.rounds)
    if window == 1:
        return f"round 1 -> {last}"
    return f"rounds 1-{window} -> {last - window + 1}-{last}"


def utility(sizes: Sizes, log: Path) -> list[Figure]:
    """Figure 7: federated / centralised accuracy, and the drop at ε = 8."""
    with output_to(log):
        result = bench_utility.measure(sizes.utility_sites, sizes.utility_rounds)
    steps = result.sites * result.rounds * result.steps
    return [
        Figure(
            7,
            "utility: non-IID federated / centralised accuracy (goal >= 0.95)",
            f"{result.ratio:.3f} ({result.federated:.3f} / {result.centralised:.3f}; "
            f"start {result.start:.3f})",
            f"FedAvg, {result.sites} non-IID sites x {result.rounds} rounds x {result.steps} "
            f"steps (real ServerApp/ClientApp in one process) vs the pooled data trained "
            f"{steps} steps from the same adapter; held-out accuracy",
        ),
        Figure(
            7,
            "utility: drop at epsilon = 8 (DP-SGD per site)",
            f"{result.dp_drop:+.3f} accuracy ({result.federated_dp:.3f} with DP)",
            'same federation with dp-mode = "sample", dp-target-epsilon = 8, delta = 1e-5',
        ),
    ]


def deployed(sizes: Sizes, log: Path) -> list[Figure]:
    """Figure 8: deployed rounds on loopback, warm and cold, against work and the floor."""
    f = script_json("bench_deploy.py", sizes.deploy_args, log)
    how = (
        f"bench_deploy.py {' '.join(sizes.deploy_args)}: `fedvlm coordinator` + 3 `fedvlm node` "
        "(--insecure, loopback, embedded model, 16 local steps); work = slowest site's metered "
        "train + evaluate + the coordinator's metered seconds (ledger energy block); floor = the "
        "same federation with a no-op ClientApp (benchmarks/floor_app); medians of rounds 2.."
    )

    def line(run: dict) -> str:
        return (
            f"wall/work {run['wall_over_work']:.2f}, wall/(floor+work) "
            f"{run['wall_over_floor_work']:.2f} ({run['wall_seconds']:.1f} s / "
            f"{run['work_seconds']:.1f} s work)"
        )

    return [
        Figure(
            8,
            f"deployed round, warm site worker (targets: wall/work <= {f['target']:g}, or "
            f"wall/(floor+work) <= {f['floor_target']:g})",
            f"{line(f['warm'])}; floor {f['floor_seconds']:.1f} s",
            how,
        ),
        Figure(8, "  same, cold (a process per message loads the model)", line(f["cold"]), how),
    ]


PARTS: list[tuple[str, Callable[[Sizes, Path], list[Figure]]]] = [
    ("overhead and bytes", overhead_and_bytes),
    ("secure aggregation", secure_aggregation),
    ("secure aggregation scaling", secure_aggregation_scale),
    ("DP-SGD step", dp_step),
    ("energy tracking", energy),
    ("scale", scale),
    ("utility", utility),
    ("deployed rounds", deployed),
]


def render(figures: list[Figure]) -> str:
    """The one table, in Markdown."""
    lines = ["| # | figure | value | how it was measured |", "|---|---|---|---|"]
    lines += [f"| {f.number} | {f.name} | {f.value} | {f.how} |" for f in figures]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (<= 15 min, 2 cores)")
    parser.add_argument("--save", type=Path, help="also write the table and command here")
    parser.add_argument("--log", type=Path, help="Flower/Ray output (default: a temp file)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    log = args.log or Path(tempfile.mkstemp(prefix="run_all-", suffix=".log")[1])
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_all.py " + shlex.join(sys.argv[1:])
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    figures: list[Figure] = []
    for label, part in PARTS:
        print(f"run_all: {label} ... (log: {log})", file=sys.stderr, flush=True)
        began = time.perf_counter()
        figures += part(sizes, log)
        print(f"run_all: {label} done in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    minutes = (time.perf_counter() - started) / 60
    header = (
        f"Command: `{command}`\n\nDate: {date}; {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), load average {load:.1f} at the "
        f"start; whole run {minutes:.1f} min. Ratios are measured within this run.\n"
    )
    table = render(figures)
    print(f"\n{header}\n{table}")
    if args.save:
        args.save.write_text(f"# Performance table\n\n{header}\n{table}\n")


if __name__ == "__main__":
    main()
