"""A real 2-site x 2-round federation through Flower's simulation engine (SuperLink + Ray)."""

import csv
import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText

from coordinator.ledger import read_ledger
from fedvlm.vlm import resolve_model_path
from simulations.runner import run_scenario
from simulations.scenario import Scenario

pytestmark = pytest.mark.slow


def test_smoke_federation_writes_a_loadable_run_folder(tmp_path):
    run_dir = run_scenario(Scenario.load("smoke"), run_dir=tmp_path)

    rows = read_ledger(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert len(row["sites"]) == 2, row
        assert row["bytes_up"] > 0 and row["bytes_down"] > 0
        assert 0.0 <= row["heldout_accuracy"] <= 1.0
        assert list(row["peak_gpu_mb"].values()) == [0.0, 0.0]  # both sites, on CPU
        # Each site's own name came through Flower's engine, keyed by its node id.
        assert sorted(row["site_names"].values()) == ["site-0", "site-1"]
        assert set(row["site_names"]) == {str(s) for s in row["sites"]}
    with open(run_dir / "ledger.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in csv_rows] == [r["round"] for r in rows]
    meta = json.loads((run_dir / "run.json").read_text())
    assert "ended" in meta

    base = AutoModelForImageTextToText.from_pretrained(resolve_model_path("embedded"))
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora, "the saved adapter carries no LoRA weights"
    saved = torch.cat([p.flatten() for n, p in model.named_parameters() if "lora_B" in n])
    assert saved.abs().sum() > 0, "LoRA B is still zero: no update reached the saved adapter"
