"""Which aggregation strategy to use: held-out accuracy and bytes per round, with and without DP.

Every run is a whole federation on the synthetic non-IID task (label and acquisition skew),
same seeds, same sites, same rounds, driven in one process: the coordinator's real
`ServerApp` main (round loop, strategy, validation, DP ledger) and each site's real
`ClientApp` (training, DP-SGD, FFA freezing, per-site rank), joined by
`simulations.in_process.InProcessGrid`, which passes every message through Flower's
protobuf encoding. That is Flower's simulation
engine minus its ~20 s start-up per run, which would dominate a table of 20 runs.

Part 1: each strategy without DP and with sample-level DP (DP-SGD at every site,
``dp-mode = "sample"``, ``dp-target-epsilon = 8``).
Part 2: heterogeneous ranks (sites of rank 4, 8 and 16; global rank 16), the exact scheme
(``flora``: stacking, re-factored to rank 16) and the linear one (``hetlora``: zero-padding),
against naive averaging: plain FedAvg of A and B with every site cut down to the smallest
rank, 4 (what a federation without rank support has to do).

    python benchmarks/bench_strategies.py                 # the table (~8 min on 2 cores)
    python benchmarks/bench_strategies.py --only fedavg ffa-lora --no-hetero
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Run as a script from anywhere: the project's packages live at the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from client import app as client_app  # noqa: E402
from coordinator.ledger import read_ledger  # noqa: E402
from fedvlm.errors import ConfigError  # noqa: E402
from fedvlm.vlm import load_peft_model  # noqa: E402
from simulations.in_process import InProcessGrid, run_coordinator  # noqa: E402

STRATEGIES = ["fedavg", "fedprox", "fedadam", "fedyogi", "ffa-lora", "trimmed-mean", "median"]
HETERO = {  # scheme -> (strategy, run lora-rank, per-site ranks or None)
    "flora (exact)": ("flora", 16, [4, 8, 16]),
    "hetlora (linear)": ("hetlora", 16, [4, 8, 16]),
    "naive: fedavg, all at rank 4": ("fedavg", 4, None),
}
BASE_CONFIG = {
    "local-steps": 8,
    "batch-size": 8,
    "learning-rate": 0.01,
    "sim-examples-per-site": 96,
    "sim-val-examples-per-site": 8,
    "heldout-examples": 120,
    "energy-tracking": False,
    "node-wait-timeout": 5.0,
    # Strategy parameters (strategies/settings.py); the rest stay at their defaults.
    "proximal-mu": 0.1,
    "trim-beta": 0.25,  # with 4 sites: drop the largest and the smallest value per coordinate
}
DP = {"dp-mode": "sample", "dp-target-epsilon": 8.0}


def federate(
    name: str, config: dict, node_configs: list[dict], run_dir: Path
) -> dict[str, float | str]:
    """Run one federation through the real ServerApp main; summarise its ledger."""
    config = {
        **config,
        "run-dir": str(run_dir),
        "run-name": name,
        "min-train-nodes": len(node_configs),
        "min-available-nodes": len(node_configs),
    }
    # Every federation starts from the same seeded adapter, as in fresh processes: the PEFT
    # model is cached per process and would otherwise carry the previous run's adapter.
    load_peft_model.cache_clear()
    grid = InProcessGrid(client_app.app, config, node_configs)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the per-round console table
        run_coordinator(grid, config)
    rows = read_ledger(run_dir / name)
    rounds = [r for r in rows if r.get("round", 0) > 0 and "heldout_accuracy" in r]
    last = rows[-1]
    return {
        "start": rows[0]["heldout_accuracy"],
        "final": rounds[-1]["heldout_accuracy"] if rounds else float("nan"),
        "best": max((r["heldout_accuracy"] for r in rounds), default=float("nan")),
        "up_kb": sum(r["bytes_up"] for r in rounds) / max(len(rounds), 1) / 1e3,
        "down_kb": sum(r["bytes_down"] for r in rounds) / max(len(rounds), 1) / 1e3,
        "rounds": len(rounds),
        "epsilon": _max_epsilon(last),
        "seconds": time.perf_counter() - started,
    }


def _max_epsilon(row: dict) -> str:
    """The largest site ε the ledger's privacy block reports (or "-" without DP)."""
    privacy = row.get("privacy") or {}
    found = [float(v) for k, v in _walk(privacy) if "epsilon" in k and isinstance(v, int | float)]
    return f"{max(found):.2f}" if found else "-"


def _walk(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _walk(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for value in tree:
            yield from _walk(value, prefix)
    else:
        yield prefix, tree


def _line(label: str, dp: str, r: dict) -> str:
    return (
        f"| {label:<30} | {dp:<6} | {r['start']:.3f} | {r['final']:.3f} | {r['best']:.3f} "
        f"| {r['up_kb']:8.1f} | {r['down_kb']:8.1f} | {r['epsilon']:>6} | {r['seconds']:5.0f} |"
    )


HEADER = (
    "| strategy                       | DP     | start | final | best  | up kB/rd | dn kB/rd "
    "|  max ε | s     |\n"
    "|--------------------------------|--------|-------|-------|-------|----------|----------"
    "|--------|-------|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=BASE_CONFIG["local-steps"])
    parser.add_argument("--lr", type=float, default=BASE_CONFIG["learning-rate"])
    parser.add_argument("--only", nargs="*", default=STRATEGIES, help="strategies of part 1")
    parser.add_argument("--no-dp", action="store_true", help="skip the DP column of part 1")
    parser.add_argument("--no-hetero", action="store_true", help="skip part 2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    base = {
        **BASE_CONFIG,
        "num-server-rounds": args.rounds,
        "local-steps": args.local_steps,
        "learning-rate": args.lr,
    }
    sites = [{} for _ in range(args.sites)]
    print(
        f"{args.sites} sites (non-IID synthetic task), {args.rounds} rounds x "
        f"{base['local-steps']} local steps at lr {args.lr}, "
        f"held-out {base['heldout-examples']} examples; "
        "in-process loop through the real ServerApp/ClientApp code (not Flower's engine).\n"
        "start/final/best: held-out accuracy before training / after the last round / best "
        "round; up/dn: adapter bytes per round (all sites together).\n"
    )
    with tempfile.TemporaryDirectory(prefix="bench-strategies-") as tmp:
        run_dir = Path(tmp)
        print("Part 1: strategies (lora-rank 8), without DP and with sample-level DP at ε = 8")
        print(HEADER, flush=True)
        for name in args.only:
            for dp_label, dp in [("none", {})] + ([] if args.no_dp else [("ε = 8", DP)]):
                config = {**base, "strategy": name, **dp}
                try:
                    result = federate(f"{name}-{'dp' if dp else 'plain'}", config, sites, run_dir)
                except ConfigError as refused:  # the coordinator's start-up checks said no
                    print(f"| {name:<30} | {dp_label:<6} | refused at start-up: {refused}")
                    continue
                print(_line(name, dp_label, result), flush=True)
        if args.no_hetero:
            return
        print(
            "\nPart 2: heterogeneous ranks, sites of rank "
            + "/".join(str(r) for r in HETERO["flora (exact)"][2])
            + " (global rank 16), no DP"
        )
        print(HEADER, flush=True)
        for label, (strategy, rank, ranks) in HETERO.items():
            config = {**base, "strategy": strategy, "lora-rank": rank, "lora-alpha": 2 * rank}
            node_configs = [{"lora-rank": r} for r in ranks] if ranks else sites[:3]
            result = federate(label.split()[0].strip(":"), config, node_configs, run_dir)
            print(_line(label, "none", result), flush=True)


if __name__ == "__main__":
    main()
