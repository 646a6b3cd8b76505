"""The embedded model's build script and the committed folder it produced."""

import math
import random

import torch
from transformers import LlavaForConditionalGeneration

from fedvlm.embedded import EMBEDDED_MODEL_DIR, figures
from fedvlm.embedded.build import main as build_main
from fedvlm.embedded.build import sincos_positions
from fedvlm.embedded.shapes import NUMBERS, RADIOGRAPH_TEXT, make_examples, vocabulary_text
from fedvlm.training import evaluate
from fedvlm.vlm import load_base


def test_build_script_output_loads_and_answers(tmp_path):
    build_main(["--out", str(tmp_path), "--steps", "5"])
    assert (tmp_path / "model.safetensors").is_file()
    model, processor = load_base(str(tmp_path))
    assert isinstance(model, LlavaForConditionalGeneration)
    result = evaluate(model, processor, make_examples(8, seed=9))
    assert result.examples == 8 and math.isfinite(result.loss)


def test_committed_model_is_small_and_knows_the_task_words():
    size = sum(f.stat().st_size for f in EMBEDDED_MODEL_DIR.iterdir())
    assert size < 5_000_000
    _, processor = load_base("embedded")
    tokenizer = processor.tokenizer
    for text in vocabulary_text():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert len(ids) <= len(text.split()) + 1, text  # about a token a word
    for answer in RADIOGRAPH_TEXT[-1].split():  # answers follow the assistant tag bare
        assert len(tokenizer(answer, add_special_tokens=False)["input_ids"]) == 1, answer
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert "<|assistant|>" in processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )


def test_position_table_starts_with_every_patch_apart():
    table = sincos_positions(4, 96)
    assert table.shape == (17, 96)
    assert torch.count_nonzero(table[0]) == 0  # class token
    distances = torch.cdist(table[1:], table[1:]) + torch.eye(16) * 1e9
    assert distances.min() > 0.5


def test_captions_state_the_count_and_each_objects_size_shape_and_side():
    for example in make_examples(64, seed=2, question_types=("caption",)):
        count, *words = example.answer.split()
        assert len(words) == 3 * NUMBERS.index(count)
        assert set(words[0::3]) <= {"small", "large"} and set(words[2::3]) <= {"left", "right"}


def test_figure_and_dot_questions_answer_with_single_known_tokens():
    _, processor = load_base("embedded")
    rng = random.Random(0)
    for kind, answers in (("figure", set(figures.FIGURES)), ("dots", set(figures.NUMERALS))):
        for _ in range(20):
            example = figures.make_example(rng, kind)
            assert example.answer in answers and example.image.size == (64, 64)
            ids = processor.tokenizer(example.answer, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1, example.answer  # a class word the LM can re-map
