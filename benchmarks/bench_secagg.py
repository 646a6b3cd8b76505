"""How much SecAgg+ costs: upload size, client masking time, coordinator unmasking time.

Ours (privacy.secagg, a full in-memory round with one client dropping after sharing keys) side
by side with Flower's legacy SecAgg+ primitives (flwr.common.secure_aggregation) doing the same
work on the same inputs with the same graph degree and threshold: quantise + mask on a client,
rebuild seeds + remove masks on the coordinator. Flower's masked vectors are int64.

    python benchmarks/bench_secagg.py            # n = 10, 50, 100 at 1M parameters (~30 s)
    python benchmarks/bench_secagg.py --full     # adds n = 250 and 500 (~3 min, ~3 GB RAM)
    python benchmarks/bench_secagg.py --simulation   # + round time with / without secure
                                                     #   aggregation in a simulated federation
    python benchmarks/bench_secagg.py --clients --simulation   # that row only (~3 min)

(from the repository root with PYTHONPATH=. so that the project's packages import).

"round s" is a whole simulated round, every client's work included, in one process;
"max |err|" is the largest error of the unmasked sum against the exact sum of the clipped
updates (at most survivors x step, since each client's rounding error is below one step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

from privacy.secagg import SecAggConfig, Stage, run_protocol_in_memory, shamir

CLIP = 1.0
FLOWER_QUANT_RANGE = 1 << 22  # SecAggPlusWorkflow defaults
FLOWER_MOD_RANGE = 1 << 32


def ours(updates: list[np.ndarray], config: SecAggConfig) -> dict[str, float]:
    """Run one full round of privacy.secagg; client 0 drops after sharing its keys."""
    start = time.perf_counter()
    run = run_protocol_in_memory(updates, None, config, drop_at={Stage.MASKED_INPUT: {0}})
    total = time.perf_counter() - start
    survivors = run.result.survivors
    exact = sum(np.clip(updates[i], -CLIP, CLIP).astype(np.float64) for i in survivors)
    sent = [run.upload_bytes[c] for c in survivors]
    return {
        "upload": float(np.mean(sent)) / (4 * updates[0].size),
        "mask_s": float(np.mean(list(run.mask_seconds.values()))),
        "unmask_s": run.unmask_seconds,
        "round_s": total,
        "err": float(np.abs(run.result.weighted_sum - exact).max()),
    }


def _ec_keypair() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]:
    private = ec.generate_private_key(ec.SECP384R1())
    return private, private.public_key()


def flower_legacy(updates: list[np.ndarray], degree: int, threshold: int) -> dict[str, float]:
    """Time Flower's SecAgg+ primitives on client 1 (masking) and on the coordinator."""
    n = len(updates)
    keys = [_ec_keypair() for _ in range(n)]
    peers = list(range(1, degree + 1))  # client 1's neighbours (graph shape is irrelevant here)
    start = time.perf_counter()
    q = factor_combine(1, quantize([updates[1]], CLIP, FLOWER_QUANT_RANGE))
    shape = [a.shape for a in q]  # Flower prepends the weight factor as a 0-d array
    q = parameters_addition(q, pseudo_rand_gen(os.urandom(32), FLOWER_MOD_RANGE, shape))
    for peer in peers:
        shared = generate_shared_key(keys[1][0], keys[(peer + 1) % n][1])
        mask = pseudo_rand_gen(shared, FLOWER_MOD_RANGE, shape)
        q = parameters_addition(q, mask) if peer % 2 else parameters_subtraction(q, mask)
    masked = parameters_mod(q, FLOWER_MOD_RANGE)
    mask_s = time.perf_counter() - start

    # Coordinator: rebuild every survivor's seed (t shares each) and regenerate its mask, then
    # rebuild the dropped client's key and regenerate its pairwise masks with its neighbours.
    seeds = [create_shares(os.urandom(32), threshold, degree) for _ in range(n - 1)]
    sk_bytes = keys[0][0].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    sk_shares = create_shares(sk_bytes, threshold, degree)
    total = [a.copy() for a in masked]
    start = time.perf_counter()
    for shares in seeds:
        seed = combine_shares(shares[:threshold])
        total = parameters_subtraction(total, pseudo_rand_gen(seed, FLOWER_MOD_RANGE, shape))
    sk = serialization.load_pem_private_key(combine_shares(sk_shares[:threshold]), None)
    for peer in peers:
        shared = generate_shared_key(sk, keys[peer][1])
        total = parameters_subtraction(total, pseudo_rand_gen(shared, FLOWER_MOD_RANGE, shape))
    parameters_mod(total, FLOWER_MOD_RANGE)
    unmask_s = time.perf_counter() - start
    upload = sum(a.nbytes for a in masked) / (4 * updates[0].size)
    return {"upload": upload, "mask_s": mask_s, "unmask_s": unmask_s}


def shamir_times(n: int, threshold: int) -> tuple[float, float]:
    """Return seconds to split one 32-byte secret n ways and to rebuild it, ours vs Flower's."""
    secret = os.urandom(32)
    start = time.perf_counter()
    shares = shamir.split(secret, list(range(1, n + 1)), threshold)
    assert shamir.combine(list(range(1, threshold + 1)), shares[:threshold], 32) == secret
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    flower_shares = create_shares(secret, threshold, n)
    assert combine_shares(flower_shares[:threshold]) == secret
    return ours_s, time.perf_counter() - start


def simulated_round(secure: bool, sites: int, rounds: int, steps: int) -> dict[str, float]:
    """Run a short simulated federation (SuperLink + Ray, embedded model); return its costs.

    The round time is the coordinator's wall-clock per round from the ledger (train with all
    protocol stages, evaluation, recording); Ray's start-up is outside it.
    """
    from coordinator.ledger import read_ledger
    from simulations.runner import run_scenario
    from simulations.scenario import Scenario

    scenario = Scenario(
        name="secure" if secure else "plain",
        federation={"num-supernodes": sites, "client-resources-num-cpus": 2},
        run_config={
            "num-server-rounds": rounds,
            "local-steps": steps,
            "sim-examples-per-site": 32,
            "sim-val-examples-per-site": 8,
            "heldout-examples": 32,
            "min-train-nodes": sites,
            "min-available-nodes": sites,
            "energy-tracking": False,
        },
    )
    with tempfile.TemporaryDirectory(prefix="bench-secagg-") as tmp:
        run = run_scenario(scenario, {"secure-aggregation": secure}, run_dir=Path(tmp))
        rows = read_ledger(run)[1:]
    return {
        "round_s": statistics.median(r["seconds"] for r in rows),
        "bytes_up": statistics.median(r["bytes_up"] for r in rows) / sites,
        "accuracy": rows[-1]["heldout_accuracy"],
    }


def print_simulation(sites: int, rounds: int, steps: int) -> None:
    """Print round time with and without secure aggregation, and their ratio."""
    results = {secure: simulated_round(secure, sites, rounds, steps) for secure in (False, True)}
    print()
    print(
        f"Simulated federation: {sites} sites, {rounds} rounds x {steps} local steps, embedded "
        "model (median round)"
    )
    print(f"{'aggregation':<12} {'round s':>8} {'up B/site':>10} {'final acc':>9}")
    for secure, r in results.items():
        name = "SecAgg+" if secure else "plain"
        print(f"{name:<12} {r['round_s']:>8.2f} {r['bytes_up']:>10,.0f} {r['accuracy']:>9.3f}")
    ratio = results[True]["round_s"] / results[False]["round_s"]
    print(f"round time ratio secure / plain: {ratio:.2f}x")


def table(clients: list[int], d: int) -> None:
    """Print ours vs Flower's legacy SecAgg+ and the Shamir timings for each n."""
    rng = np.random.default_rng(0)
    print(f"SecAgg+ round, {d:,} parameters, 1 dropout after key sharing, clip {CLIP}")
    header = (
        f"{'n':>4} {'k':>3} {'t':>3} {'impl':<14} {'dtype':<6} {'upload/fp32':>11} "
        f"{'mask s':>8} {'unmask s':>9} {'round s':>8} {'step':>8} {'max |err|':>9}"
    )
    print(header)
    print("-" * len(header))
    for n in clients:
        base = [rng.uniform(-1.2, 1.2, d).astype(np.float32) for _ in range(4)]
        updates = [base[i % 4] for i in range(n)]
        config = SecAggConfig(num_clients=n, clip=CLIP)
        mine = ours(updates, config)
        print(
            f"{n:>4} {config.degree:>3} {config.threshold:>3} {'fedvlm':<14} "
            f"{config.dtype.name:<6} {mine['upload']:>10.3f}x {mine['mask_s']:>8.3f} "
            f"{mine['unmask_s']:>9.3f} {mine['round_s']:>8.2f} {config.step:>8.1e} "
            f"{mine['err']:>9.1e}"
        )
        theirs = flower_legacy(updates, config.degree, config.threshold)
        print(
            f"{n:>4} {config.degree:>3} {config.threshold:>3} {'flower-legacy':<14} "
            f"{'int64':<6} {theirs['upload']:>10.3f}x {theirs['mask_s']:>8.3f} "
            f"{theirs['unmask_s']:>9.3f} {'-':>8} {2 * CLIP / FLOWER_QUANT_RANGE:>8.1e} {'-':>9}"
        )
    print()
    print("Shamir, one 32-byte secret: split n ways + rebuild from t shares (seconds)")
    print(f"{'n':>4} {'t':>3} {'fedvlm':>9} {'flower':>9}")
    for n in clients:
        t = n // 2 + 1
        mine_s, theirs_s = shamir_times(n, t)
        print(f"{n:>4} {t:>3} {mine_s:>9.4f} {theirs_s:>9.4f}")


def main() -> None:
    """Print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also 250 and 500 clients")
    parser.add_argument("--params", type=int, default=1_000_000, help="update size")
    parser.add_argument(
        "--clients", type=int, nargs="*", default=[10, 50, 100], help="none: skip the table"
    )
    parser.add_argument(
        "--simulation",
        action="store_true",
        help="also time rounds of a simulated federation with and without secure aggregation",
    )
    parser.add_argument("--sites", type=int, default=4, help="sites in --simulation")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in --simulation")
    parser.add_argument("--steps", type=int, default=4, help="local steps in --simulation")
    args = parser.parse_args()
    d = args.params
    if args.full:
        args.clients = sorted({*args.clients, 250, 500})
    if args.clients:
        table(args.clients, d)
    if args.simulation:
        print_simulation(args.sites, args.rounds, args.steps)


if __name__ == "__main__":
    main()
