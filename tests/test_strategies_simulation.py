"""FFA-LoRA through Flower's simulation engine (SuperLink + Ray): 2 sites x 2 rounds."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText

from coordinator.ledger import read_ledger
from fedvlm.lora import LoraSettings, apply_lora
from fedvlm.vlm import load_base, resolve_model_path
from simulations.runner import run_scenario
from simulations.scenario import Scenario

pytestmark = pytest.mark.slow


def test_an_ffa_lora_federation_completes_with_a_still_at_its_seeded_initialisation(tmp_path):
    scenario = Scenario(
        name="ffa-lora",
        federation={"num-supernodes": 2, "client-resources-num-cpus": 2},
        run_config={
            "strategy": "ffa-lora",
            "num-server-rounds": 2,
            "local-steps": 2,
            "sim-examples-per-site": 16,
            "sim-val-examples-per-site": 8,
            "heldout-examples": 16,
            "energy-tracking": False,
        },
    )
    run_dir = run_scenario(scenario, run_dir=tmp_path)

    rows = read_ledger(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert len(row["sites"]) == 2 and row["rejected"] == [], row
        # Sites send B and the projector only; they receive the whole adapter.
        assert 0.5 * row["bytes_down"] < row["bytes_up"] < 0.75 * row["bytes_down"], row

    saved = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(resolve_model_path("embedded")),
        run_dir / "adapter",
    )
    initial = apply_lora(load_base("embedded")[0], LoraSettings())
    start = dict(initial.named_parameters())
    lora_a = [(n, p) for n, p in saved.named_parameters() if "lora_A" in n]
    assert lora_a
    for name, param in lora_a:
        assert torch.equal(param, start[name]), f"{name} moved under FFA-LoRA"
    trained_b = torch.cat([p.flatten() for n, p in saved.named_parameters() if "lora_B" in n])
    assert trained_b.abs().sum() > 0, "no B update reached the saved adapter"
