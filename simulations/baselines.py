"""What each simulated site would reach without the federation, next to what it got from it.

For every simulated site of a finished run, on that site's own validation split:

- federated: the run's final global adapter, as is;
- personalised: that adapter after a few local steps on the site's training data (what
  `eval-personalise-steps` measures on site during a run);
- local only: the site training alone, from the same initial adapter, for as many steps as
  it trained in the federation (rounds x local steps).

Computed in one process from the run folder (its `run.json` and final adapter) and written to
`baselines.json` beside the ledger, which the report then shows. Only in simulation: a real
site's data is not here to train on.

    python -m simulations.baselines runs/<id> [--num-sites N] [--personalise-steps K]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from client.site_data import load_site
from coordinator.html_report import BASELINES_JSON
from coordinator.report import build_report
from fedvlm.adapter import get_adapter_state, set_adapter_state
from fedvlm.config import NodeSettings, RunSettings
from fedvlm.errors import ConfigError, DataError, FedVLMError
from fedvlm.ledger_schema import load_run, summarize
from fedvlm.lora import apply_lora
from fedvlm.site_metrics import EvalSettings, personalised
from fedvlm.training import evaluate, train_local
from fedvlm.vlm import load_base, load_peft_model
from privacy.settings import PrivacySettings

ADAPTER_FILE = Path("adapter") / "adapter_model.safetensors"


def is_private(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` used differential privacy (its run.json's dp-mode)."""
    config = load_run(Path(run_dir)).meta.get("run_config", {})
    return PrivacySettings.from_config(config).mode != "none"


def compute_baselines(
    run_dir: Path, *, num_sites: int | None = None, personalise_steps: int | None = None
) -> dict[str, Any]:
    """Federated, personalised and local-only validation accuracy of each simulated site.

    ``num_sites`` defaults to the number of sites in the ledger; ``personalise_steps`` to the
    run's `eval-personalise-steps`, or its `local-steps` when that is 0.

    Raises
    ------
    DataError
        If the run folder has no final adapter.
    """
    run_dir = Path(run_dir)
    if is_private(run_dir):
        raise ConfigError(
            "dp-mode",
            f"{run_dir} is a DP run: its baselines would train on the sites' data without "
            "differential privacy and be shown beside its figures",
        )
    record = load_run(run_dir)
    settings = RunSettings.from_config(record.meta.get("run_config", {}))
    if not (run_dir / ADAPTER_FILE).is_file():
        raise DataError(f"{run_dir / ADAPTER_FILE}: no final adapter; did the run finish?")
    num_sites = num_sites or len(summarize(record)["sites"])
    steps = personalise_steps or (
        EvalSettings.from_config(record.meta.get("run_config", {})).personalise_steps
        or settings.local_steps
    )
    alone = settings.num_rounds * settings.local_steps
    model, processor = load_peft_model(settings.base_model, settings.lora)
    found = get_adapter_state(model)
    # The seeded start every site and the coordinator share, rebuilt: the cached model's
    # adapter may have been overwritten by whoever used it last in this process.
    initial = get_adapter_state(apply_lora(load_base(settings.base_model)[0], settings.lora))
    final = load_file(str(run_dir / ADAPTER_FILE))
    sites = {}
    for k in range(num_sites):
        node = NodeSettings(partition_id=k, num_partitions=num_sites)
        site = load_site(node, settings.simulation, settings.seed, settings.heldout_path)
        set_adapter_state(model, final)
        federated = evaluate(model, processor, site.val)
        tuned = personalised(
            model,
            processor,
            site.train,
            site.val,
            steps=steps,
            lr=settings.learning_rate,
            batch_size=settings.batch_size,
            seed=settings.seed + k,
        )
        set_adapter_state(model, initial)
        train_local(
            model,
            processor,
            site.train,
            steps=alone,
            lr=settings.learning_rate,
            batch_size=settings.batch_size,
            seed=settings.seed + k,
        )
        local = evaluate(model, processor, site.val)
        sites[f"site-{k}"] = {
            "examples": federated.examples,
            "federated": federated.accuracy,
            "personalised": tuned.accuracy,
            "local_only": local.accuracy,
        }
    set_adapter_state(model, found)  # leave the cached model as it was found
    return {
        "personalise_steps": steps,
        "local_only_steps": alone,
        "note": "local-only and personalised training here use no differential privacy",
        "sites": sites,
    }


def write_baselines(run_dir: Path, **options: Any) -> Path:
    """Compute the baselines, write `baselines.json` and rebuild the report with them."""
    baselines = compute_baselines(run_dir, **options)
    path = Path(run_dir) / BASELINES_JSON
    path.write_text(json.dumps(baselines, indent=2) + "\n")
    build_report(Path(run_dir))
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m simulations.baselines RUN_DIR`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished simulated run folder")
    parser.add_argument("--num-sites", type=int, default=None, help="(sites in the ledger)")
    parser.add_argument("--personalise-steps", type=int, default=None, help="(local-steps)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        path = write_baselines(
            args.run_dir, num_sites=args.num_sites, personalise_steps=args.personalise_steps
        )
    except FedVLMError as error:
        print(f"fedvlm: error: {error}", file=sys.stderr)
        return 2
    print(f"fedvlm: baselines in {path}; report rebuilt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
