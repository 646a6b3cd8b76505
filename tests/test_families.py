"""Every supported VLM family, on a tiny copy of its real architecture built offline.

Each copy (``tests/tiny_vlms.py``) is saved with ``save_pretrained`` and loaded back through
``fedvlm.vlm.load_base``, the path a hub checkpoint takes on a GPU node; then label masking,
a LoRA round (one local step, evaluation, generation) and the adapter's trip through a Flower
``ArrayRecord`` are checked on it.

Qwen2-VL / Qwen2.5-VL: their processor class needs torchvision, which does not install beside
the CPU torch wheel here, so the tiny copies (like ``load_base`` for these families) use the
family's own ``QwenImageTextProcessor`` (image processor + tokenizer, the text expansion done
by fedvlm); the model classes are the real ones.
"""

import importlib.util

import pytest
import tiny_vlms
import torch

from fedvlm.adapter import (
    adapter_to_arrayrecord,
    arrayrecord_to_adapter,
    get_adapter_state,
    set_adapter_state,
)
from fedvlm.batching import IGNORE, encode, generate_answers, score
from fedvlm.embedded.shapes import make_examples
from fedvlm.errors import ConfigError, FedVLMError, ModelNotFoundError
from fedvlm.families import FAMILIES, family_for_config, family_for_model_type
from fedvlm.lora import LoraSettings, apply_lora
from fedvlm.presets import adapter_bytes, load_presets, lora_params, model_bytes, model_params
from fedvlm.runtime import ModelSettings, peak_gpu_mb
from fedvlm.training import evaluate, train_local
from fedvlm.vlm import load_base, load_peft_model

TYPES = list(tiny_vlms.BUILDERS)
EXAMPLES = make_examples(6, seed=5)


@pytest.fixture(scope="module", params=TYPES)
def saved(request, tmp_path_factory) -> tuple[str, str]:
    """(model_type, folder) of a tiny copy saved the way hub checkpoints are."""
    torch.set_num_threads(1)
    model, processor = tiny_vlms.build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return request.param, str(folder)


def test_every_family_in_the_registry_is_tested():
    assert set(FAMILIES) - set(TYPES) == {"smolvlm"}  # SmolVLM2: see its own tests below


def test_loaded_copy_is_the_built_model(saved):
    model_type, folder = saved
    built, _ = tiny_vlms.build(model_type)
    loaded, processor = load_base(folder)
    assert loaded.config.model_type == model_type
    assert family_for_config(loaded.config) is FAMILIES[model_type]
    batch = encode(processor, EXAMPLES[:2])
    with torch.no_grad():
        assert torch.equal(score(built.eval(), batch)[0], score(loaded, batch)[0])


def test_exactly_the_answer_tokens_carry_loss(saved):
    model_type, folder = saved
    _, processor = load_base(folder)
    family = FAMILIES[model_type]
    tokenizer = processor.tokenizer
    batch = encode(processor, EXAMPLES)
    prompts = encode(processor, EXAMPLES, with_answer=False)
    assert "labels" not in prompts
    for row, ex in enumerate(EXAMPLES):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        length = int(batch["attention_mask"][row].sum())
        labelled = (labels != IGNORE).nonzero().flatten()
        answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
        # A contiguous block that ends the sequence: the answer tokens, then the end token.
        assert labelled.tolist() == list(range(length - len(labelled), length))
        assert torch.equal(labels[labelled], ids[labelled])
        assert int(ids[length - 1]) == family.end_id(tokenizer)
        assert tokenizer.decode(ids[labelled[:-1]]).strip() == ex.answer
        assert len(labelled) - 1 in (len(answer), len(answer) + 1)  # + a leading-space token
        # Everything before it is the generation prompt, token for token.
        prompt_length = int(prompts["attention_mask"][row].sum())
        assert prompt_length == length - len(labelled)
        assert torch.equal(prompts["input_ids"][row, :prompt_length], ids[:prompt_length])


def test_lora_round_on_the_loaded_copy(saved):
    model_type, folder = saved
    family = FAMILIES[model_type]
    base, processor = load_base(folder)
    model = apply_lora(base, LoraSettings(rank=4, alpha=8), seed=1)
    before = get_adapter_state(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert any(f".{family.projector}." in k for k in before)
    lora_keys = [k for k in before if "lora_" in k]
    assert lora_keys and all(f".{family.language_model}." in k for k in lora_keys)

    stats = train_local(model, processor, EXAMPLES, steps=1, lr=1e-2, batch_size=4, seed=0)
    assert stats.steps == 1 and torch.isfinite(torch.tensor(stats.mean_loss))
    after = get_adapter_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    result = evaluate(model, processor, EXAMPLES, batch_size=4)
    assert result.examples == len(EXAMPLES) and 0.0 <= result.accuracy <= 1.0

    # The adapter travels as an ArrayRecord and reproduces the model on a fresh base.
    received = arrayrecord_to_adapter(adapter_to_arrayrecord(after))
    other = apply_lora(load_base(folder)[0], LoraSettings(rank=4, alpha=8), seed=2)
    set_adapter_state(other, received)
    batch = encode(processor, EXAMPLES[:3])
    with torch.no_grad():
        assert torch.equal(score(model, batch)[0], score(other, batch)[0])

    answers = generate_answers(model, processor, EXAMPLES[:2], max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_teacher_forced_accuracy_is_greedy_generation(saved):
    """Trained until it knows two answers, the model generates exactly them: the template,
    the labels, the end token and generation agree for this family."""
    model_type, folder = saved
    model, processor = load_base(folder)
    examples = EXAMPLES[:2]
    for param in model.parameters():
        param.requires_grad_(True)
    for chunk in range(5):  # until both answers are right, 200 steps at most
        train_local(model, processor, examples, steps=40, lr=1e-2, batch_size=2, seed=chunk)
        if evaluate(model, processor, examples).accuracy == 1.0:
            break
    assert evaluate(model, processor, examples).accuracy == 1.0
    generated = generate_answers(model, processor, examples, max_new_tokens=24)
    assert generated == [ex.answer for ex in examples]


@pytest.mark.parametrize("model_type", TYPES)
def test_vision_lora_is_optional(model_type):
    model, _ = tiny_vlms.build(model_type)
    family = FAMILIES[model_type]
    default = get_adapter_state(apply_lora(model, LoraSettings(train_projector=False)))
    assert not any(f".{family.vision_tower}." in k for k in default)
    model, _ = tiny_vlms.build(model_type)
    both = get_adapter_state(apply_lora(model, LoraSettings(train_projector=False, vision=True)))
    vision = [k for k in both if f".{family.vision_tower}." in k and "lora_A" in k]
    assert vision and set(default) < set(both)


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    model, processor = tiny_vlms.build("llava")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    results = []
    for checkpointing in (False, True):
        runtime = ModelSettings(gradient_checkpointing=checkpointing)
        model, processor = load_peft_model(str(tmp_path), LoraSettings(), runtime=runtime)
        assert model.base_model.model.is_gradient_checkpointing == checkpointing
        stats = train_local(model, processor, EXAMPLES, steps=2, lr=1e-2, batch_size=3, seed=0)
        results.append((stats.mean_loss, get_adapter_state(model)))
    (loss, plain), (loss_ckpt, ckpt) = results
    assert loss == pytest.approx(loss_ckpt, rel=1e-5)
    assert all(torch.allclose(plain[k], ckpt[k], atol=1e-6) for k in plain)


def test_cpu_fallback_and_memory_report():
    runtime = ModelSettings()
    assert runtime.torch_device() == torch.device("cpu")
    assert runtime.torch_dtype() == torch.float32
    assert peak_gpu_mb() == 0.0
    assert ModelSettings(dtype="bfloat16").torch_dtype() == torch.bfloat16


@pytest.mark.parametrize(
    ("node", "run", "key"),
    [
        ({"device": "tpu"}, {}, "device"),
        ({}, {"dtype": "float64"}, "dtype"),
        ({"gradient-checkpointing": "yes"}, {}, "gradient-checkpointing"),
        ({"load-in-4bit": 1}, {}, "load-in-4bit"),
    ],
)
def test_model_settings_name_the_bad_key(node, run, key):
    with pytest.raises(ConfigError, match=key):
        ModelSettings.from_config(node, run)


def test_node_keys_override_run_keys():
    settings = ModelSettings.from_config(
        {"dtype": "float16"}, {"dtype": "bfloat16", "device": "cpu"}
    )
    assert (settings.dtype, settings.device) == ("float16", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: nothing to refuse")
def test_device_cuda_is_refused_clearly_without_cuda():
    with pytest.raises(ConfigError, match="device.*no CUDA"):
        ModelSettings(device="cuda").torch_device()


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None,
    reason="bitsandbytes is installed: nothing to refuse",
)
def test_4bit_is_refused_clearly_without_bitsandbytes():
    with pytest.raises(ConfigError, match=r"load-in-4bit.*bitsandbytes.*fedvlm\[qlora\]"):
        load_base("embedded", runtime=ModelSettings(load_in_4bit=True))


def test_unsupported_architecture_names_the_key():
    with pytest.raises(ConfigError, match="base-model.*'blip_2'.*idefics3"):
        family_for_model_type("blip_2")


@pytest.mark.parametrize(
    "hub_id",
    [
        "HuggingFaceTB/SmolVLM-256M-Instruct",
        "Qwen/Qwen2-VL-2B-Instruct",
        "google/paligemma-3b-pt-224",
        "llava-hf/llava-1.5-7b-hf",
    ],
)
def test_uncached_hub_model_fails_fast_naming_model_and_cache(monkeypatch, hub_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="cache") as err:
        load_base(hub_id, allow_download=True)
    assert hub_id in str(err.value)


def test_smolvlm2_needs_its_extra_or_has_it():
    installed = all(importlib.util.find_spec(m) for m in ("num2words", "torchvision"))
    if installed:
        assert family_for_model_type("smolvlm").projector == "connector"
    else:
        with pytest.raises(FedVLMError, match=r"smolvlm.*pip install 'fedvlm\[smolvlm\]'"):
            family_for_model_type("smolvlm")


@pytest.mark.xfail(
    importlib.util.find_spec("torchvision") is None,
    reason="SmolVLM2's processor (model_type smolvlm) needs torchvision's video processor, "
    "which does not import beside the CPU torch 2.13 wheel; SmolVLM 256M/500M are idefics3",
    raises=(FedVLMError, ImportError, AttributeError, ValueError),
    strict=True,
)
def test_smolvlm2_processor_builds():
    from transformers import SmolVLMImageProcessorPil, SmolVLMProcessor

    family_for_model_type("smolvlm")
    _, idefics = tiny_vlms.build("idefics3")
    SmolVLMProcessor(image_processor=SmolVLMImageProcessorPil(), tokenizer=idefics.tokenizer)


@pytest.mark.parametrize("model_type", TYPES)
def test_half_precision_base_keeps_a_float32_adapter(model_type, tmp_path):
    """As on a bf16 GPU node: the adapter that travels stays float32 (numpy has no bfloat16)."""
    model, processor = tiny_vlms.build(model_type)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    base, processor = load_base(str(tmp_path), runtime=ModelSettings(dtype="bfloat16"))
    assert next(base.parameters()).dtype == torch.bfloat16
    model = apply_lora(base, LoraSettings())
    stats = train_local(model, processor, EXAMPLES, steps=1, lr=1e-3, batch_size=3, seed=0)
    assert torch.isfinite(torch.tensor(stats.mean_loss))
    adapter = get_adapter_state(model)
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    assert list(arrayrecord_to_adapter(adapter_to_arrayrecord(adapter))) == list(adapter)


@pytest.mark.parametrize("model_type", TYPES)
def test_preset_size_rules_match_the_adapter_peft_builds(model_type):
    """The byte counts of benchmarks/bench_adapter_sizes.py, checked on real PEFT adapters."""
    model, _ = tiny_vlms.build(model_type)
    text = model.config.text_config
    dims = {
        key: getattr(text, key)
        for key in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
        )
    }
    dims["head_dim"] = getattr(text, "head_dim", None)
    adapter = get_adapter_state(apply_lora(model, LoraSettings(rank=4, train_projector=False)))
    assert sum(t.numel() for t in adapter.values()) == lora_params(dims, rank=4)


def test_presets_meet_the_hundredfold_goal_and_match_their_model_cards():
    presets = load_presets()
    assert {p.model_type for p in presets} <= set(FAMILIES)
    assert {"idefics3", "qwen2_vl", "paligemma", "llava"} <= {p.model_type for p in presets}
    for preset in presets:
        assert model_params(preset) == pytest.approx(preset.params_card, rel=0.03), preset.name
        rec = preset.recommended
        sent = adapter_bytes(preset, rec["rank"], rec["train_projector"])
        assert model_bytes(preset) >= 100 * sent, preset.name


@pytest.mark.parametrize("model_type", TYPES)
def test_projector_batch_is_examples_exactly_where_the_family_says(model_type):
    """DP-SGD's per-example gradients of a trained projector need this (privacy refuses
    train-projector where it is false)."""
    model, processor = tiny_vlms.build(model_type)
    family = FAMILIES[model_type]
    projector = next(m for n, m in model.named_modules() if n.endswith(f".{family.projector}"))
    seen = []
    projector.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    with torch.no_grad():
        score(model, encode(processor, EXAMPLES[:3]))
    assert (seen == [3]) == family.projector_sees_examples, seen


@pytest.mark.parametrize("model_type", TYPES)
def test_vision_tower_batch_is_examples_exactly_where_the_family_says(model_type):
    """The same for vision LoRA: privacy refuses lora-vision under DP-SGD where it is false."""
    model, processor = tiny_vlms.build(model_type)
    family = FAMILIES[model_type]
    tower = next(m for n, m in model.named_modules() if n.endswith(f".{family.vision_tower}"))
    seen = []
    tower.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(
            next(a for a in (*args, *kwargs.values()) if torch.is_tensor(a)).shape[0]
        ),
        with_kwargs=True,
    )
    with torch.no_grad():
        score(model, encode(processor, EXAMPLES[:3]))
    assert (seen == [3]) == family.projector_sees_examples, seen
