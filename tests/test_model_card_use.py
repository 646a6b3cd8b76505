"""The model card's "Use" snippet, run exactly as written, loads the run's trained adapter.

A card that names `base_model: embedded` and calls `from_pretrained("embedded")` fails for a
user following it; these tests take the card a run writes, execute its code block unchanged,
and compare the loaded model's outputs with the trained adapter's.
"""

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from lora_start import b_moved_off_zero

from coordinator.model_card import model_card
from coordinator.run_folder import ADAPTER_DIR
from fedvlm.adapter import get_adapter_state, set_adapter_state
from fedvlm.batching import encode
from fedvlm.data import make_examples
from fedvlm.lora import LoraSettings
from fedvlm.vlm import load_peft_model


def _use_snippet(card_text: str) -> str:
    """The Python block under the card's "## Use" heading, verbatim."""
    section = card_text.split("## Use", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def trained_run(tmp_path: Path) -> tuple[Path, dict]:
    """A run folder as the coordinator leaves it: run.json, ledger, a trained PEFT adapter."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"run_id": "run", "base_model": "embedded"}))
    rows = [{"round": 0, "heldout_accuracy": 0.3}, {"round": 1, "heldout_accuracy": 0.6}]
    (run_dir / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, _ = load_peft_model("embedded", LoraSettings())
    before = get_adapter_state(model)
    trained = b_moved_off_zero(before, seed=5)  # an adapter that changes the outputs
    set_adapter_state(model, trained)
    try:
        model.save_pretrained(run_dir / ADAPTER_DIR)
    finally:
        set_adapter_state(model, before)  # the cached model is shared by other tests
    return run_dir, trained


def test_card_snippet_runs_as_written_and_gives_the_trained_adapters_outputs(trained_run):
    run_dir, trained = trained_run
    text = model_card(run_dir)
    card = ModelCard(text)
    assert card.data.base_model != "embedded"
    assert Path(card.data.base_model, "config.json").is_file()  # a loadable folder
    assert card.data.library_name == "peft"
    assert card.data.eval_results[0].metric_value == pytest.approx(0.6)

    namespace: dict = {}
    exec(compile(_use_snippet(text), "model-card-use", "exec"), namespace)  # as written
    model, processor = namespace["model"], namespace["processor"]

    reference, _ = load_peft_model("embedded", LoraSettings())
    before = get_adapter_state(reference)
    batch = encode(processor, make_examples(3, seed=9, image_size=32))
    with torch.no_grad():
        loaded = model(**batch).logits
        set_adapter_state(reference, trained)
        try:
            expected = reference(**batch).logits
        finally:
            set_adapter_state(reference, before)
        base_only = reference(**batch).logits
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(loaded, base_only, atol=1e-4)  # the adapter was really loaded
