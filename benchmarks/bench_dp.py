"""What sample-level DP costs on the embedded model: step time and held-out accuracy.

Two tables:

1. Time of one DP-SGD step / one plain step (forward, backward, AdamW step) on the same
   batch, for Opacus' per-sample-gradient modes: ``hooks`` (fedvlm's default), ``functorch``
   and ``ghost`` (ghost clipping: per-sample norms without per-sample gradients, two
   backward passes), and ``hooks+csprng``: hooks with the noise drawn from AES-CTR
   (`privacy.secure_noise`, what fedvlm runs). Blocks of steps of every mode are
   interleaved, repeated, and the median per-step time is reported, so machine load drifts
   hit all modes alike.
2. Held-out accuracy after the same rounds without DP and at ε ∈ {8, 3, 1} (δ = 1e-5, the
   noise calibrated per site for the whole run), on the synthetic non-IID task. The rounds
   run through the real coordinator (`coordinator.app.main`) and the real ClientApp, joined
   in this process by `simulations.in_process.InProcessGrid`, which passes messages through
   Flower's serialisation and keeps each node's `context.state` (no Ray, no SuperLink: same
   code path, minutes less).

Usage: ``python benchmarks/bench_dp.py [--rounds 4] [--sites 4] [--skip-accuracy]
[--set batch-size=32 dp-max-grad-norm=0.3 ...] [--json PATH]`` (default run: about 5-6
minutes on 2 CPU cores). ``--set`` applies run-config keys to every accuracy run alike;
``--json`` writes the step times (table 1) for run_all.py.
"""

import argparse
import json
import logging
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from client import app as client_app
from client.site_data import load_site
from coordinator.ledger import read_ledger
from fedvlm.adapter import get_adapter_state, set_adapter_state
from fedvlm.batching import answer_loss, encode, score
from fedvlm.config import NodeSettings, RunSettings
from fedvlm.training import take
from fedvlm.vlm import load_peft_model
from privacy.dp_sgd import use_secure_noise
from privacy.secure_noise import SecureRandom
from simulations.in_process import InProcessGrid, run_coordinator

# "+csprng": the same Opacus mode with the noise from privacy.secure_noise (what fedvlm runs).
MODES = ("hooks", "hooks+csprng", "functorch", "ghost")


class AnswerLoss(torch.nn.Module):
    """The answer-token loss as a criterion, the form ghost clipping needs."""

    reduction = "mean"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return answer_loss(logits, labels)[0].mean()


def _private(model, batch_size: int, mode: str):
    """Opacus' hooks, optimizer and (ghost only) criterion for one timing block."""
    params = [p for p in model.parameters() if p.requires_grad]
    loader = DataLoader(TensorDataset(torch.arange(batch_size)), batch_size=batch_size)
    model.train()
    made = PrivacyEngine(accountant="prv").make_private(
        module=model,
        optimizer=torch.optim.AdamW(params, lr=1e-4),
        criterion=AnswerLoss(),
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        grad_sample_mode=mode.removesuffix("+csprng"),
        wrap_model=False,
    )
    hooks, optimizer = made[0], made[1]
    if mode.endswith("+csprng"):
        use_secure_noise(optimizer, SecureRandom())
    return hooks, optimizer, made[2] if mode == "ghost" else None


def _time_steps(model, batch, mode: str | None, steps: int) -> list[float]:
    """Per-step seconds of ``steps`` steps on ``batch`` (mode None: plain AdamW)."""
    size = len(batch["input_ids"])
    hooks = criterion = None
    if mode is None:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        model.train()
    else:
        hooks, optimizer, criterion = _private(model, size, mode)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    times = []
    try:
        for _ in range(steps):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            if criterion is None:
                loss, _ = score(model, batch)
                loss.mean().backward()
            else:  # ghost clipping: the criterion runs both backward passes
                criterion(model(**inputs).logits, batch["labels"]).backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
    finally:
        if hooks is not None:
            hooks.cleanup()
        model.eval()
    return times


def step_time_table(
    run: RunSettings, batch_size: int, repeats: int, steps: int
) -> dict[str, float | str]:
    """Table 1: DP / non-DP step time per Opacus mode, interleaved blocks, medians.

    Returns the median seconds per step by mode ("non-DP" for the plain step; a mode
    Opacus cannot run maps to its error), which ``--json`` writes for run_all.py.
    """
    model, processor = load_peft_model(run.base_model, run.lora)
    site = load_site(NodeSettings(partition_id=0, num_partitions=1), run.simulation, run.seed)
    batch = encode(processor, site.train[:batch_size])
    batch = take(batch, torch.arange(batch_size))
    samples: dict[str | None, list[float]] = {None: [], **{m: [] for m in MODES}}
    errors: dict[str, str] = {}
    for _ in range(repeats):
        for mode in samples:
            if mode in errors:
                continue
            try:
                samples[mode] += _time_steps(model, batch, mode, steps)[1:]  # first: warm-up
            except Exception as err:  # a mode Opacus cannot run on this model: say why
                errors[mode] = f"{type(err).__name__}: {str(err).splitlines()[0][:60]}"
    plain = statistics.median(samples[None])
    print(f"\nDP-SGD step time on the embedded model (batch {batch_size}, {repeats} interleaved")
    print(f"blocks of {steps - 1} timed steps per mode, median seconds per step)\n")
    print(f"| {'mode':<12} | {'s/step':>7} | {'vs non-DP':>9} |")
    print(f"|{'-' * 14}|{'-' * 9}|{'-' * 11}|")
    print(f"| {'non-DP':<12} | {plain:7.3f} | {1.0:8.2f}x |")
    figures: dict[str, float | str] = {"non-DP": plain}
    for mode in MODES:
        if mode in errors:
            print(f"| {mode:<12} | {'fails':>7} | {errors[mode]} |")
            figures[mode] = errors[mode]
        else:
            median = statistics.median(samples[mode])
            print(f"| {mode:<12} | {median:7.3f} | {median / plain:8.2f}x |")
            figures[mode] = median
    return figures


def accuracy_table(
    rounds: int, sites: int, epsilons: list[float], overrides: dict[str, object]
) -> None:
    """Table 2: held-out accuracy after the same rounds, without DP and at each ε.

    ``overrides`` are run-config keys applied to every run alike (batch size, clip, ...).
    """
    rows = []
    # Coordinator and sites share this process's cached model: every run starts from the
    # same initial adapter, not from where the previous run left it.
    run = RunSettings.from_config(overrides)
    model, _ = load_peft_model(run.base_model, run.lora)
    initial = get_adapter_state(model)
    with tempfile.TemporaryDirectory() as tmp:
        for epsilon in [None, *epsilons]:
            set_adapter_state(model, initial)
            name = "no-dp" if epsilon is None else f"eps-{epsilon:g}"
            config = {
                "num-server-rounds": rounds,
                "min-train-nodes": sites,
                "min-available-nodes": sites,
                "energy-tracking": False,
                "run-dir": tmp,
                "run-name": name,
                **overrides,
            }
            if epsilon is not None:
                config |= {"dp-mode": "sample", "dp-target-epsilon": epsilon}
            started = time.perf_counter()
            run_coordinator(InProcessGrid(client_app.app, config, [{}] * sites), config)
            ledger = read_ledger(Path(tmp) / name)
            privacy = ledger[-1].get("privacy") or {}
            rows.append(
                (
                    name,
                    privacy.get("epsilon"),
                    privacy.get("noise_multiplier"),
                    ledger[0]["heldout_accuracy"],
                    ledger[-1]["heldout_accuracy"],
                    time.perf_counter() - started,
                )
            )
    print(
        f"\nHeld-out accuracy after {rounds} rounds, {sites} sites (synthetic non-IID task, "
        f"{run.local_steps} local steps of expected batch {run.batch_size}, "
        f"{run.simulation.examples_per_site} examples per site, δ = 1e-5, PRV accountant)\n"
    )
    print(
        f"| {'run':<7} | {'ε spent':>7} | {'noise z':>7} | {'acc before':>10} | "
        f"{'acc after':>9} | {'seconds':>7} |"
    )
    print(f"|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 12}|{'-' * 11}|{'-' * 9}|")
    for name, eps, noise, before, after, seconds in rows:
        eps_text = "-" if eps is None else f"{eps:.2f}"
        noise_text = "-" if noise is None else f"{noise:.2f}"
        print(
            f"| {name:<7} | {eps_text:>7} | {noise_text:>7} | {before:10.3f} | "
            f"{after:9.3f} | {seconds:7.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0, 1.0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--json", type=Path, help="also write the step-time figures here (run_all.py)"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="run-config overrides for every accuracy run, TOML values (batch-size=32)",
    )
    args = parser.parse_args()
    overrides = tomllib.loads(
        "\n".join(f"{item.split('=', 1)[0]} = {item.split('=', 1)[1]}" for item in args.set)
    )
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    step_seconds = step_time_table(RunSettings(), args.batch_size, args.repeats, args.steps)
    if args.json:
        args.json.write_text(json.dumps({"step_seconds": step_seconds}, indent=2) + "\n")
    if not args.skip_accuracy:
        accuracy_table(args.rounds, args.sites, args.epsilons, overrides)


if __name__ == "__main__":
    main()
