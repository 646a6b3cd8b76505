"""Federated vs. personalised vs. local-only per simulated site, from a run folder alone."""

import json

import pytest
from lora_start import b_moved_off_zero

from fedvlm.adapter import get_adapter_state, set_adapter_state
from fedvlm.config import RunSettings
from fedvlm.data.partition import synthetic_site
from fedvlm.errors import ConfigError, DataError
from fedvlm.lora import apply_lora
from fedvlm.training import evaluate, train_local
from fedvlm.vlm import load_base
from simulations.baselines import compute_baselines, main

RUN_CONFIG = {
    "num-server-rounds": 2,
    "local-steps": 3,
    "batch-size": 4,
    "learning-rate": 0.01,
    "sim-examples-per-site": 12,
    "sim-val-examples-per-site": 8,
    "energy-tracking": False,
}
RUN = RunSettings.from_config(RUN_CONFIG)


@pytest.fixture
def run_dir(tmp_path, cached_peft_model):
    """A finished two-site run: run.json, a ledger naming two sites, a final adapter."""
    path = tmp_path / "run"
    path.mkdir()
    (path / "run.json").write_text(json.dumps({"run_id": "run", "run_config": RUN_CONFIG}))
    rows = [
        {"round": 0, "sites": [], "heldout_accuracy": 0.3},
        {"round": 1, "sites": [5, 9], "heldout_accuracy": 0.4},
    ]
    (path / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, _ = cached_peft_model(RUN.base_model, RUN.lora)
    final = b_moved_off_zero(get_adapter_state(model), seed=11)
    set_adapter_state(model, final)
    model.save_pretrained(path / "adapter")
    return path, final


def _site(k: int):
    sim = RUN.simulation
    return synthetic_site(
        k,
        2,
        n_train=sim.examples_per_site,
        n_val=sim.val_examples_per_site,
        label_alpha=sim.label_alpha,
        acquisition_skew=sim.acquisition_skew,
        seed=RUN.seed,
    )


def test_baselines_match_direct_training_and_evaluation(run_dir, cached_peft_model):
    path, final = run_dir
    # The run's seeded initial adapter (the cached model's may have been overwritten by
    # earlier tests; the baselines rebuild it the same way).
    initial = get_adapter_state(apply_lora(load_base(RUN.base_model)[0], RUN.lora))
    baselines = compute_baselines(path, personalise_steps=2)
    assert baselines["local_only_steps"] == 6 and baselines["personalise_steps"] == 2
    assert list(baselines["sites"]) == ["site-0", "site-1"]
    model, processor = cached_peft_model(RUN.base_model, RUN.lora)
    for k in range(2):
        site, entry = _site(k), baselines["sites"][f"site-{k}"]
        set_adapter_state(model, final)
        assert entry["federated"] == pytest.approx(evaluate(model, processor, site.val).accuracy)
        train_local(model, processor, site.train, steps=2, lr=0.01, batch_size=4, seed=k)
        assert entry["personalised"] == pytest.approx(evaluate(model, processor, site.val).accuracy)
        set_adapter_state(model, initial)
        train_local(model, processor, site.train, steps=6, lr=0.01, batch_size=4, seed=k)
        assert entry["local_only"] == pytest.approx(evaluate(model, processor, site.val).accuracy)


def test_command_writes_baselines_json_and_the_report_shows_them(run_dir):
    path, _ = run_dir
    assert main([str(path), "--personalise-steps", "1"]) == 0
    written = json.loads((path / "baselines.json").read_text())
    assert set(written["sites"]["site-0"]) == {
        "examples",
        "federated",
        "personalised",
        "local_only",
    }
    html = (path / "report.html").read_text()
    assert "Federated vs. personalised vs. local-only, per site" in html  # the plot
    assert "<th>local only</th>" in html and "<td>site-1</td>" in html  # the table
    report = json.loads((path / "report.json").read_text())
    assert report["plots"]["baselines"]["series"]["sites"] == ["site-0", "site-1"]


def test_a_run_without_its_final_adapter_is_refused(run_dir):
    path, _ = run_dir
    (path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(DataError, match="no final adapter"):
        compute_baselines(path)


def test_a_dp_run_gets_no_non_private_baselines(run_dir):
    """They would train on the sites' data without DP and sit beside the DP figures.
    Mutation: drop the is_private check in compute_baselines -> fails."""
    path, _ = run_dir
    config = {**RUN_CONFIG, "dp-mode": "sample", "dp-target-epsilon": 8.0}
    (path / "run.json").write_text(json.dumps({"run_id": "run", "run_config": config}))
    with pytest.raises(ConfigError) as err:
        compute_baselines(path)
    assert err.value.key == "dp-mode"
