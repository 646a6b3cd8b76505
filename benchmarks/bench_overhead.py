"""FL overhead: a simulated round's wall time / the same work run alone in one process.

The simulated side is a real `fedvlm simulate` run (Flower's engine: SuperLink, `flwr run`,
Ray actors) of a 4-site federation where every site trains every round, on one Ray actor
(2 CPUs per site on a 2-core machine, so sites train one after another). Its round seconds
come from the run's ledger; the first round (Ray actors start and load the model) and the
engine's start-up are reported apart, the ratio uses the median of the later rounds.

The "alone" side does, in this process with no Flower at all, exactly the computation a round
needs: for each site, set the global adapter, draw its data (cached, as in the actor) and run
the same `train_local` steps with the same seeds and batch size, then the coordinator's
held-out evaluation. Federated evaluation and energy tracking are off in both (they have their
own rows in benchmarks/run_all.py). Blocks of the alone side run before and after the
simulation, because the simulation cannot be interleaved round by round with a process
outside it; both use one torch thread. On a loaded machine that comparison is noisy, so a
second ratio is measured inside the very same rounds: each round's wall time over the time its
sites spent in their train handlers plus the coordinator's aggregation and held-out evaluation
(the durations the energy meters record in the ledger, also with tracking off); what is left
is the engine's own cost (sampling, messaging, serialisation, Ray scheduling, ledger and
checkpoint writes).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_overhead.py [--rounds 6] [--sites 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import SimulatedRun, simulated_run  # noqa: E402

from client.site_data import load_site  # noqa: E402
from fedvlm.adapter import get_adapter_state, set_adapter_state  # noqa: E402
from fedvlm.config import NodeSettings, RunSettings  # noqa: E402
from fedvlm.data.partition import heldout_set  # noqa: E402
from fedvlm.training import evaluate, train_local  # noqa: E402
from fedvlm.vlm import load_base, load_peft_model  # noqa: E402
from simulations.scenario import Scenario  # noqa: E402

RUN_CONFIG = {  # shared by both sides; the rest are pyproject's defaults
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,
    "energy-tracking": False,
}


@dataclass
class Overhead:
    """The two sides of the comparison and the byte counts of the same run."""

    simulated: SimulatedRun
    alone: list[float]
    full_model_bytes: int

    @property
    def ratio(self) -> float:
        """Steady simulated round / median alone round."""
        return self.simulated.steady_round / statistics.median(self.alone)

    @property
    def in_round(self) -> list[float]:
        """Per later round: its wall time / the work its sites and coordinator metered in it."""
        return [row["seconds"] / metered_work(row) for row in self.simulated.rounds[1:]]


def metered_work(row: dict) -> float:
    """Seconds of a round spent inside the sites' message handlers and the coordinator's
    aggregation and evaluation, as their energy meters timed them (also with tracking off)."""
    energy = row["energy"]
    sites = sum(node["seconds"] for node in energy["nodes"].values())
    return sites + energy["coordinator"]["seconds"]


def round_alone(run: RunSettings, sites: int, server_round: int, model, processor, heldout):
    """Seconds for one round's training and held-out evaluation, in this process."""
    start = get_adapter_state(model)
    began = time.perf_counter()
    for partition in range(sites):
        set_adapter_state(model, start)
        node = NodeSettings(partition_id=partition, num_partitions=sites)
        site = load_site(node, run.simulation, run.seed)
        train_local(
            model,
            processor,
            site.train,
            steps=run.local_steps,
            lr=run.learning_rate,
            batch_size=run.batch_size,
            seed=run.seed + 100_003 * server_round + partition,  # as the ClientApp seeds it
        )
    evaluate(model, processor, heldout)
    seconds = time.perf_counter() - began
    set_adapter_state(model, start)
    return seconds


def full_model_bytes(run: RunSettings) -> int:
    """Bytes of the whole base model's weights, as stored (what full fine-tuning would send)."""
    model, _ = load_base(run.base_model)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def measure(sites: int, rounds: int, blocks: int = 2, log: Path | None = None) -> Overhead:
    """Alone blocks, the simulated run, alone blocks again."""
    torch.set_num_threads(1)
    config = {**RUN_CONFIG, "min-train-nodes": sites, "num-server-rounds": rounds}
    run = RunSettings.from_config(config)
    model, processor = load_peft_model(run.base_model, run.lora)
    heldout = heldout_set(run.simulation.heldout_examples, seed=run.seed)
    round_alone(run, sites, 1, model, processor, heldout)  # warm-up: caches, allocator

    def block() -> list[float]:
        return [round_alone(run, sites, r, model, processor, heldout) for r in range(2, 2 + 2)]

    alone = [t for _ in range(blocks) for t in block()]
    scenario = Scenario(name="overhead", federation={"client-resources-num-cpus": 2})
    simulated = simulated_run(scenario, sites=sites, overrides=config, log=log)
    alone += [t for _ in range(blocks) for t in block()]
    return Overhead(simulated, alone, full_model_bytes(run))


def lines(result: Overhead) -> list[str]:
    """The printed summary."""
    sim = result.simulated
    return [
        f"simulated round, median of rounds 2..{len(sim.rounds)} (s)   {sim.steady_round:8.2f}",
        f"same work alone in one process, median (s)      {statistics.median(result.alone):8.2f}",
        f"alone, min .. max (s)                           "
        f"{min(result.alone):.2f} .. {max(result.alone):.2f}",
        f"overhead ratio (goal <= 1.05)                   {result.ratio:8.3f}",
        f"same rounds: wall / metered work, median        "
        f"{statistics.median(result.in_round):8.3f}",
        f"  min .. max                                    "
        f"{min(result.in_round):.3f} .. {max(result.in_round):.3f}",
        f"round 1, Ray actors starting (s)                {sim.first_round:8.2f}",
        f"engine start-up to first round (s)              {sim.startup:8.2f}",
        f"engine teardown after last round (s)            {sim.teardown:8.2f}",
        f"bytes up per site per round                     {sim.up_bytes_per_site:8.0f}",
        f"full model bytes                                {result.full_model_bytes:8.0f}",
        f"full model / adapter upload                     "
        f"{result.full_model_bytes / sim.up_bytes_per_site:8.1f}x",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--log", type=Path, default=Path("bench_overhead.log"), help="Flower output"
    )
    args = parser.parse_args()
    result = measure(args.sites, args.rounds, log=args.log)
    print(
        f"\nFL overhead, {args.sites} sites x {RunSettings().local_steps} local steps per round\n"
    )
    print("\n".join(lines(result)))


if __name__ == "__main__":
    main()
