"""The shared VLM core: loading, LoRA, and the adapter that travels."""

import pytest
import torch

from fedvlm.adapter import (
    adapter_nbytes,
    adapter_to_arrayrecord,
    add,
    arrayrecord_to_adapter,
    get_adapter_state,
    set_adapter_state,
    subtract,
)
from fedvlm.batching import encode
from fedvlm.embedded.shapes import make_examples
from fedvlm.errors import ConfigError, FedVLMError, ModelNotFoundError
from fedvlm.lora import LoraSettings, apply_lora
from fedvlm.vlm import load_base, load_peft_model


@pytest.fixture(scope="module")
def batch():
    _, processor = load_base("embedded")
    return encode(processor, make_examples(4, seed=3))


def logits(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits


def test_save_then_load_gives_identical_logits(tmp_path, batch):
    model, processor = load_base("embedded")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again, _ = load_base(str(tmp_path))
    assert torch.equal(logits(model, batch), logits(again, batch))


def test_adapter_holds_only_lora_and_projector_and_is_small():
    model, _ = load_base("embedded")
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peft_model = apply_lora(model, LoraSettings())
    adapter = get_adapter_state(peft_model)
    assert adapter
    for key in adapter:
        assert "lora_" in key or "multi_modal_projector" in key, key
        assert "vision_tower" not in key and "embed_tokens" not in key, key
    assert any("multi_modal_projector" in key for key in adapter)
    assert adapter_nbytes(adapter) < model_bytes / 4


def test_lora_targets_language_model_only_and_init_is_deterministic():
    first = get_adapter_state(apply_lora(load_base("embedded")[0], LoraSettings(), seed=7))
    second = get_adapter_state(apply_lora(load_base("embedded")[0], LoraSettings(), seed=7))
    assert list(first) == list(second)
    assert all(torch.equal(first[k], second[k]) for k in first)
    lora_keys = [k for k in first if "lora_A" in k]
    assert lora_keys and all("language_model" in k for k in lora_keys)
    without = get_adapter_state(
        apply_lora(load_base("embedded")[0], LoraSettings(train_projector=False))
    )
    assert not any("multi_modal_projector" in k for k in without)


def test_adapter_arrayrecord_round_trip_is_exact():
    model, _ = load_peft_model("embedded", LoraSettings())
    adapter = {k: v + torch.randn_like(v) for k, v in get_adapter_state(model).items()}
    back = arrayrecord_to_adapter(adapter_to_arrayrecord(adapter))
    assert list(back) == list(adapter)
    assert all(torch.equal(back[k], adapter[k]) for k in adapter)


def test_set_adapter_state_writes_and_rejects_mismatches(batch):
    model, _ = load_peft_model("embedded", LoraSettings())
    original = get_adapter_state(model)
    changed = {k: v + 0.5 for k, v in original.items()}
    set_adapter_state(model, changed)
    assert all(torch.equal(get_adapter_state(model)[k], changed[k]) for k in changed)
    moved = logits(model, batch)
    set_adapter_state(model, original)
    assert not torch.equal(moved, logits(model, batch))

    first = next(iter(original))
    with pytest.raises(FedVLMError, match="missing"):
        set_adapter_state(model, {k: v for k, v in original.items() if k != first})
    with pytest.raises(FedVLMError, match="unexpected"):
        set_adapter_state(model, {**original, "extra.weight": torch.zeros(1)})
    with pytest.raises(FedVLMError, match="shape"):
        set_adapter_state(model, {**original, first: torch.zeros(3, 3)})
    assert all(torch.equal(get_adapter_state(model)[k], original[k]) for k in original)


def test_update_arithmetic_round_trips():
    model, _ = load_peft_model("embedded", LoraSettings())
    base = get_adapter_state(model)
    local = {k: v * 2 + 1 for k, v in base.items()}
    update = subtract(local, base)
    assert all(torch.allclose(add(base, update)[k], local[k]) for k in base)
    assert all(torch.allclose(add(local, update, scale=-1.0)[k], base[k], atol=1e-6) for k in base)


def test_load_peft_model_is_cached_per_process():
    assert (
        load_peft_model("embedded", LoraSettings())[0]
        is load_peft_model("embedded", LoraSettings())[0]
    )


def test_uncached_hub_id_raises_quickly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="nobody-org/no-such-vlm") as err:
        load_base("nobody-org/no-such-vlm", allow_download=True)
    assert "cache" in str(err.value)


def test_missing_local_folder_is_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does-not-exist"):
        load_base(str(tmp_path / "does-not-exist"))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"rank": 0}, "lora-rank"), ({"alpha": -1}, "lora-alpha"), ({"dropout": 1.0}, "lora-dropout")],
)
def test_lora_settings_name_the_bad_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        LoraSettings(**kwargs)
