"""Presets for real VLMs, and what one federated round costs with each: adapter vs model bytes.

Each ``*.json`` here holds the dimensions of a public checkpoint's ``config.json`` (language
model, vision tower, projector) and the settings recommended for it. From those dimensions the
functions below count parameters exactly as PEFT builds the adapter (LoRA ``A`` is
``rank x in``, ``B`` is ``out x rank``, on every attention and MLP linear of the language model;
the projector, when trained, travels whole), so the bytes a site sends per round can be read off
before anyone downloads a model. The model's own count is the sum of its big matrices (norms and
small biases left out) and is checked against the model card's figure.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).parent
ADAPTER_BYTES_PER_PARAM = 4  # adapters travel in float32 (fedvlm.lora keeps them so)
MODEL_BYTES_PER_PARAM = 2  # checkpoints are distributed and run in bfloat16/float16


@dataclass(frozen=True)
class Preset:
    """One checkpoint's dimensions and recommended settings (see the JSON files)."""

    name: str
    hub_id: str
    model_type: str
    params_card: int
    gpu: str
    min_gpu_gb: int
    recommended: dict[str, Any]
    text: dict[str, Any]
    vision: dict[str, Any]
    projector: dict[str, Any]


def load_presets() -> list[Preset]:
    """Every preset, smallest model first."""
    presets = [Preset(**json.loads(p.read_text())) for p in PRESETS_DIR.glob("*.json")]
    return sorted(presets, key=lambda p: p.params_card)


def lm_linear_shapes(text: dict[str, Any]) -> list[tuple[int, int]]:
    """(in, out) of the attention and MLP linears of one decoder layer."""
    hidden, inter = text["hidden_size"], text["intermediate_size"]
    head_dim = text.get("head_dim") or hidden // text["num_attention_heads"]
    q = text["num_attention_heads"] * head_dim
    kv = text["num_key_value_heads"] * head_dim
    return [
        (hidden, q),  # q_proj
        (hidden, kv),  # k_proj
        (hidden, kv),  # v_proj
        (q, hidden),  # o_proj
        (hidden, inter),  # gate_proj
        (hidden, inter),  # up_proj
        (inter, hidden),  # down_proj
    ]


def lora_params(text: dict[str, Any], rank: int) -> int:
    """LoRA parameters on every attention and MLP linear of the language model."""
    per_layer = sum(rank * (fan_in + fan_out) for fan_in, fan_out in lm_linear_shapes(text))
    return per_layer * text["num_hidden_layers"]


def projector_params(projector: dict[str, Any]) -> int:
    """Weights and biases of the projector's linears."""
    return sum(i * o + (o if bias else 0) for i, o, bias in projector["linears"])


def model_params(preset: Preset) -> int:
    """Parameters of the whole model from its dimensions (big matrices only)."""
    text, vision = preset.text, preset.vision
    decoder = text["num_hidden_layers"] * sum(i * o for i, o in lm_linear_shapes(text))
    embeddings = text["vocab_size"] * text["hidden_size"]
    lm_head = 0 if text["tie_word_embeddings"] else embeddings
    width, inter = vision["hidden_size"], vision["intermediate_size"]
    mlp = (3 if vision["gated_mlp"] else 2) * width * inter
    patch = 3 * vision.get("temporal_patch_size", 1) * vision["patch_size"] ** 2 * width
    encoder = vision["num_hidden_layers"] * (4 * width * width + mlp) + patch
    return decoder + embeddings + lm_head + encoder + projector_params(preset.projector)


def adapter_bytes(preset: Preset, rank: int, train_projector: bool) -> int:
    """Bytes one site uploads per round (and downloads: the same again)."""
    params = lora_params(preset.text, rank)
    if train_projector:
        params += projector_params(preset.projector)
    return params * ADAPTER_BYTES_PER_PARAM


def model_bytes(preset: Preset) -> int:
    """Bytes of the full model in bfloat16: what sending the model would cost instead."""
    return model_params(preset) * MODEL_BYTES_PER_PARAM
