"""Build, pretrain and save the embedded tiny LLaVA (``python -m fedvlm.embedded.build``).

Why pretrain: LoRA on a random base barely learns, so the base is trained in full for 6,000 steps
on generic synthetic VQA: grey scenes (``shapes.py``: presence, side, count, size and shape of
small objects among clutter, plus captions that state them all) and whole-image figures
(``figures.py``: which of 16 stroke figures, how many dots), so that it reads both small objects
and a shape spread over the whole image. The result is saved with ``save_pretrained`` and loads
through ``AutoModelForImageTextToText`` / ``AutoProcessor``, the same path a hub model takes.
Seeded and single-threaded, so a rebuild gives the same model; about 8 minutes on one core.

Why a peak learning rate of 3e-4: at 3e-3 (and at 1e-3) this tiny transformer, trained from
scratch, stalls on a plateau where it learns each question's answer prior and never the image
(16-way figure accuracy stays at chance for 600 steps); at 3e-4 the same run reaches 0.76.
"""

import argparse
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from fedvlm.embedded import EMBEDDED_MODEL_DIR
from fedvlm.embedded.shapes import IMAGE_SIZE, make_examples, vocabulary_text
from fedvlm.training import evaluate, train_local

PATCH_SIZE = 16  # 64 px / 16 = 4 x 4 patch tokens, plus CLIP's class token (see build_model)
PEAK_LR = 3e-4
CHUNK = 250  # steps per train_local call; each call encodes a fresh example pool
SPECIAL_TOKENS = ["<pad>", "<eos>", "<image>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}<image>"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def train_tokenizer(
    special: list[str], chat_template: str | None, **kwargs: object
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained locally on the tasks' vocabulary, ``special`` tokens first.

    Deterministic and offline (about 0.05 s), so tiny models of any family can get a real
    tokenizer without a hub; ``kwargs`` name the special tokens' roles (pad, eos, ...).
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(vocabulary_text() * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, chat_template=chat_template, **kwargs)


def build_processor() -> LlavaProcessor:
    """The locally trained tokenizer wrapped with the image processor."""
    tokenizer = train_tokenizer(
        SPECIAL_TOKENS,
        CHAT_TEMPLATE,
        pad_token="<pad>",
        eos_token="<eos>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=1,  # CLIP's class token, kept by the "full" strategy
        chat_template=CHAT_TEMPLATE,
    )


def build_model(processor: LlavaProcessor) -> LlavaForConditionalGeneration:
    """A ~1.1M-parameter LLaVA: 3-layer CLIP vision tower, MLP projector, 3-layer Llama.

    Why 16 px patches and the class token ("full" strategy, 17 image tokens): with 64 tokens of
    8 px the language model never learned to gather a shape spread over the whole image from
    them; 16 tokens still separate small objects, and CLIP's class token, attending over all
    patches, hands the language model a summary of the image.
    """
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2 + 1,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    model = LlavaForConditionalGeneration(config)
    embedding = model.model.vision_tower.embeddings.position_embedding
    with torch.no_grad():
        embedding.weight.copy_(sincos_positions(IMAGE_SIZE // PATCH_SIZE, vision.hidden_size))
    return model


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """Fixed-form 2-D sin-cos start for CLIP's learned position table (class token row zero).

    Why: CLIP's default start (std 0.02) is drowned by the patch content after the first layer
    norm, so a tiny tower learns "how bright" long before "where", and never learns left/right
    in a few thousand steps. Half the channels encode the row, half the column, as in MAE.
    """
    quarter = dim // 4
    omega = 1.0 / 100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    parts = []
    for coordinate in (rows.flatten(), cols.flatten()):
        angle = coordinate[:, None].double() * omega[None, :]
        parts += [angle.sin(), angle.cos()]
    table = torch.cat(parts, dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


def build(out: Path, steps: int, seed: int = 0) -> float:
    """Build, pretrain for ``steps`` and save into ``out``; return held-out accuracy."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    random.seed(seed)
    processor = build_processor()
    model = build_model(processor)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny-llava: {n_params / 1e6:.2f}M parameters, vocab {len(processor.tokenizer)}")
    held_out = make_examples(300, seed=seed + 1)
    start = time.perf_counter()
    for done in range(0, steps, CHUNK):
        # A fresh pool per chunk (never the held-out seed) and a cosine-decayed learning rate.
        pool = make_examples(2000, seed=seed + 2 + done)
        lr = PEAK_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done / steps)))
        stats = train_local(
            model,
            processor,
            pool,
            steps=min(CHUNK, steps - done),
            lr=lr,
            batch_size=16,
            seed=seed + done,
        )
        print(
            f"step {done + stats.steps:5d}  lr {lr:.1e}  loss {stats.mean_loss:.3f}  "
            f"{time.perf_counter() - start:6.1f} s",
            flush=True,
        )
    result = evaluate(model, processor, held_out)
    per_type = "  ".join(f"{k} {acc:.2f}" for k, (_, acc) in result.by_type.items())
    print(f"pretraining accuracy {result.accuracy:.3f} (loss {result.loss:.3f}): {per_type}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    print(f"saved to {out}")
    return result.accuracy


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EMBEDDED_MODEL_DIR)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build(args.out, args.steps, args.seed)


if __name__ == "__main__":
    main()
