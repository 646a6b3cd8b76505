"""Round time with energy tracking / without: the meter's cost on a client's round.

One "round" is what a client process does each round: a short local training (a small
transformer block, batch 8) then an evaluation pass. With tracking, each of the two is wrapped in
`EnergyMeter.measure()`, as the client does.

The overhead is the meter's cost per round as a percentage of the round without tracking: two
measurements (the median cost of measuring an empty block, which is all the meter adds: it runs
no thread of its own) over the median untracked round; the target is below `TARGET_PCT`. As a
cross-check, tracked and untracked rounds are interleaved (so drift in machine load hits both
alike) and the median ratio of the pairs is printed; on a shared machine its spread is wider
than the overhead itself. The one-off start-up per process is printed apart.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_energy.py [--repeats 7] [--steps 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from fedvlm.energy import EnergyMeter, EnergySettings

#: The meter may cost at most this share of a round (percent).
TARGET_PCT = 1.0
#: Measurements per client round: train and evaluate.
MEASUREMENTS_PER_ROUND = 2


def make_work(steps: int) -> tuple[callable, callable]:
    """A ~0.8M-parameter transformer trained on random tokens, batch 8 x 80 tokens.

    Sized like the embedded default's client work (a 0.85M-parameter VLM, ~0.1 s per step on
    one thread, 16 local steps per round), so the ratio speaks for the embedded simulation.
    """
    torch.manual_seed(0)
    model = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(
            d_model=128, nhead=4, dim_feedforward=512, batch_first=True
        ),
        num_layers=4,
    )
    head = torch.nn.Linear(128, 3)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    inputs, targets = torch.randn(8, 80, 128), torch.randint(0, 3, (8,))

    def train() -> None:
        model.train()
        for _ in range(steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(head(model(inputs).mean(1)), targets)
            loss.backward()
            optimizer.step()

    def evaluate() -> None:
        model.eval()
        with torch.no_grad():
            for _ in range(max(steps // 4, 1)):
                head(model(inputs).mean(1))

    return train, evaluate


def one_round(train, evaluate, meter: EnergyMeter | None) -> float:
    """Seconds for one train + evaluate, each measured when a meter is given."""
    measure = meter.measure if meter else contextlib.nullcontext
    start = time.perf_counter()
    with measure():
        train()
    with measure():
        evaluate()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=16, help="local training steps per round")
    parser.add_argument("--json", type=Path, help="also write the figures here (run_all.py)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    train, evaluate = make_work(args.steps)
    start = time.perf_counter()
    meter = EnergyMeter(EnergySettings(country_iso_code="FRA"))
    with meter.measure():
        pass
    startup = time.perf_counter() - start
    one_round(train, evaluate, None)  # warm torch up before timing

    plain, tracked, ratios = [], [], []
    for repeat in range(args.repeats):
        if repeat % 2:  # alternate the order so neither side always runs on a warmer cache
            with_meter = one_round(train, evaluate, meter)
            without = one_round(train, evaluate, None)
        else:
            without = one_round(train, evaluate, None)
            with_meter = one_round(train, evaluate, meter)
        plain.append(without)
        tracked.append(with_meter)
        ratios.append(with_meter / without)

    empty = []
    for _ in range(50):
        begin = time.perf_counter()
        with meter.measure():
            pass
        empty.append(time.perf_counter() - begin)

    measurement = statistics.median(empty)
    overhead_pct = 100 * MEASUREMENTS_PER_ROUND * measurement / statistics.median(plain)
    print(f"{'quantity':<44}{'value':>12}")
    print(f"{'round without tracking, median (s)':<44}{statistics.median(plain):>12.3f}")
    print(f"{'round with tracking, median (s)':<44}{statistics.median(tracked):>12.3f}")
    print(f"{'ratio with/without, median of pairs':<44}{statistics.median(ratios):>12.4f}")
    print(f"{'ratio, min .. max':<44}{min(ratios):>6.3f}..{max(ratios):.3f}")
    print(f"{'cost of one measurement, median (ms)':<44}{measurement * 1e3:>12.2f}")
    print(f"{'one-off start-up per process (s)':<44}{startup:>12.2f}")
    verdict = "met" if overhead_pct < TARGET_PCT else "MISSED"
    print(
        f"energy tracking overhead: {overhead_pct:.2f}% of round time "
        f"({MEASUREMENTS_PER_ROUND} measurements per round; target < {TARGET_PCT:g}%: {verdict})"
    )
    if args.json:
        figures = {
            "plain_s": statistics.median(plain),
            "tracked_s": statistics.median(tracked),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "measurement_ms": measurement * 1e3,
            "overhead_pct": overhead_pct,
            "target_pct": TARGET_PCT,
            "startup_s": startup,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
