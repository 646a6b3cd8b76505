"""Bytes per round per site vs the full model, for each real-VLM preset (``fedvlm/presets``).

Counted from the checkpoints' published dimensions with the same rules PEFT uses to build the
adapter (the rules are checked against real PEFT adapters on tiny copies in
tests/test_families.py). The model's parameter count from the dimensions is printed beside the
model card's, as a check. Goal: the recommended setting sends at least 100x less than the model.

Run: .venv/bin/python benchmarks/bench_adapter_sizes.py [--ranks 4 8 16]
"""

import argparse

from fedvlm.presets import (
    adapter_bytes,
    load_presets,
    model_bytes,
    model_params,
    projector_params,
)

GOAL = 100


def mb(n: int) -> str:
    """Bytes as megabytes (10^6) with one decimal."""
    return f"{n / 1e6:.1f}"


def main(argv: list[str] | None = None) -> None:
    """Print the per-preset table, then the recommended settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args(argv)
    presets = load_presets()

    head = f"{'preset':<15} {'params (dims / card)':>21} {'model MB':>9} {'proj MB':>8}"
    for r in args.ranks:
        head += f" {'r' + str(r) + ' MB':>8} {'ratio':>6}"
    print("Adapter (float32, LoRA on LM attention+MLP, no projector) vs model (bf16), per round")
    print(head)
    for p in presets:
        full = model_bytes(p)
        row = (
            f"{p.name:<15} {model_params(p) / 1e9:>9.2f}B / {p.params_card / 1e9:>5.2f}B "
            f"{mb(full):>9} {mb(4 * projector_params(p.projector)):>8}"
        )
        for r in args.ranks:
            up = adapter_bytes(p, r, train_projector=False)
            row += f" {mb(up):>8} {full / up:>5.0f}x"
        print(row)

    print()
    print("Recommended settings (fedvlm/presets/*.json): bytes each site sends per round")
    print(
        f"{'preset':<15} {'GPU':<64} {'rank':>4} {'proj':>5} {'4bit':>5} "
        f"{'up MB':>7} {'ratio':>6} goal"
    )
    for p in presets:
        rec = p.recommended
        up = adapter_bytes(p, rec["rank"], rec["train_projector"])
        ratio = model_bytes(p) / up
        print(
            f"{p.name:<15} {p.gpu:<64} {rec['rank']:>4} {str(rec['train_projector']):>5} "
            f"{str(rec['load_in_4bit']):>5} {mb(up):>7} {ratio:>5.0f}x "
            f"{'ok' if ratio >= GOAL else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
