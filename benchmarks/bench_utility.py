"""Utility: non-IID federated accuracy / centralised accuracy on the same data and steps.

Federated: FedAvg over N non-IID synthetic sites (label and acquisition skew as in
pyproject), R rounds of S local steps each, run through the real ServerApp and ClientApp
in one process (bench_strategies.federate: the coordinator's round loop and the sites'
training, with every message through Flower's protobuf encoding, no Ray).
Centralised: the union of the same sites' training examples in one place, trained from the
same initial adapter with the same optimiser, learning rate and batch size for as many
gradient steps as the federation took in total (N x R x S). Both are scored on the
coordinator's held-out set (balanced answers, scanners over every site's range).
The privacy row repeats the federation with DP-SGD at every site (dp-mode = "sample",
dp-target-epsilon = 8, δ = 1e-5): the drop is federated-without-DP minus federated-with-DP.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_utility.py [--rounds 10] [--sites 4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_strategies import federate  # noqa: E402

from client.site_data import load_site  # noqa: E402
from fedvlm.config import NodeSettings, RunSettings  # noqa: E402
from fedvlm.data.partition import heldout_set  # noqa: E402
from fedvlm.training import evaluate, train_local  # noqa: E402
from fedvlm.vlm import load_peft_model  # noqa: E402

DP_EPSILON = 8.0


@dataclass
class Utility:
    """Held-out accuracies of the three runs, and how they were set up."""

    sites: int
    rounds: int
    steps: int
    start: float
    federated: float
    centralised: float
    federated_dp: float

    @property
    def ratio(self) -> float:
        """Federated / centralised held-out accuracy."""
        return self.federated / self.centralised

    @property
    def dp_drop(self) -> float:
        """Accuracy points lost by DP-SGD at ε = 8 (federated without DP minus with)."""
        return self.federated - self.federated_dp


def centralised(run: RunSettings, sites: int) -> tuple[float, float]:
    """Held-out accuracy before and after training on the pooled data; fresh adapter."""
    load_peft_model.cache_clear()  # the same seeded initial adapter the federation started from
    model, processor = load_peft_model(run.base_model, run.lora)
    pooled = [
        example
        for i in range(sites)
        for example in load_site(
            NodeSettings(partition_id=i, num_partitions=sites), run.simulation, run.seed
        ).train
    ]
    heldout = heldout_set(run.simulation.heldout_examples, seed=run.seed)
    before = evaluate(model, processor, heldout).accuracy
    train_local(
        model,
        processor,
        pooled,
        steps=sites * run.num_rounds * run.local_steps,
        lr=run.learning_rate,
        batch_size=run.batch_size,
        seed=run.seed,
    )
    return before, evaluate(model, processor, heldout).accuracy


def measure(sites: int, rounds: int, overrides: dict | None = None) -> Utility:
    """The federated run, the centralised one, and the federated one at ε = 8."""
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    config = {
        "num-server-rounds": rounds,
        "energy-tracking": False,
        "fraction-evaluate": 0.0,
        **(overrides or {}),
    }
    run = RunSettings.from_config(config)
    nodes = [{} for _ in range(sites)]
    dp = {"dp-mode": "sample", "dp-target-epsilon": DP_EPSILON}
    with (
        tempfile.TemporaryDirectory(prefix="bench-utility-") as tmp,
        contextlib.redirect_stdout(io.StringIO()),
    ):
        plain = federate("plain", config, nodes, Path(tmp))
        private = federate("dp", {**config, **dp}, nodes, Path(tmp))
    before, central = centralised(run, sites)
    if abs(before - plain["start"]) > 1e-9:  # not the same starting point: the ratio is void
        raise RuntimeError(f"centralised starts at {before}, federated at {plain['start']}")
    return Utility(
        sites, rounds, run.local_steps, plain["start"], plain["final"], central, private["final"]
    )


def lines(result: Utility) -> list[str]:
    """The printed summary."""
    return [
        f"held-out accuracy before training               {result.start:8.3f}",
        f"federated (FedAvg, non-IID)                     {result.federated:8.3f}",
        f"centralised (pooled data, same total steps)     {result.centralised:8.3f}",
        f"federated / centralised (goal >= 0.95)          {result.ratio:8.3f}",
        f"federated with DP-SGD at epsilon = {DP_EPSILON:g}             {result.federated_dp:8.3f}",
        f"drop at epsilon = {DP_EPSILON:g} (accuracy points)             {result.dp_drop:+8.3f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    result = measure(args.sites, args.rounds)
    print(
        f"\nUtility: {result.sites} sites x {result.rounds} rounds x {result.steps} local steps "
        f"(centralised: {result.sites * result.rounds * result.steps} steps)\n"
    )
    print("\n".join(lines(result)))


if __name__ == "__main__":
    main()
