"""Encoding, scoring and local training on the embedded model."""

import torch

from fedvlm.adapter import get_adapter_state, set_adapter_state
from fedvlm.batching import IGNORE, encode, score
from fedvlm.data.example import VQAExample
from fedvlm.embedded.shapes import VARIANT_TYPE, make_examples
from fedvlm.lora import LoraSettings
from fedvlm.training import evaluate, train_local
from fedvlm.vlm import load_base, load_peft_model


def test_labels_cover_only_answer_tokens_and_eos():
    _, processor = load_base("embedded")
    tokenizer = processor.tokenizer
    examples = make_examples(3, seed=1)
    examples.append(VQAExample(examples[0].image, "where is the shape?", "left"))
    batch = encode(processor, examples)
    for row, ex in enumerate(examples):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE].tolist()
        expected = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
        assert kept == expected + [tokenizer.eos_token_id]
        positions = (labels != IGNORE).nonzero().flatten()
        assert torch.equal(batch["input_ids"][row, positions], labels[positions])
        assert int(batch["attention_mask"][row].sum()) == int(positions[-1]) + 1
    prompt_only = encode(processor, examples, with_answer=False)
    assert "labels" not in prompt_only
    assert prompt_only["input_ids"].shape[1] < batch["input_ids"].shape[1]


def test_score_correctness_is_exact_match_of_teacher_forced_argmax():
    model, processor = load_base("embedded")
    batch = encode(processor, make_examples(8, seed=2))
    with torch.no_grad():
        loss, correct = score(model, batch)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert loss.shape == correct.shape == (8,)
    for row in range(8):
        positions = (batch["labels"][row] != IGNORE).nonzero().flatten()
        predicted = logits[row, positions - 1].argmax(-1)
        assert bool(correct[row]) == torch.equal(predicted, batch["labels"][row, positions])


def test_train_local_lowers_the_loss_and_moves_only_the_adapter():
    model, processor = load_peft_model("embedded", LoraSettings())
    initial = get_adapter_state(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    examples = make_examples(32, seed=4, question_types=(VARIANT_TYPE,))
    before = evaluate(model, processor, examples)
    stats = train_local(model, processor, examples, steps=30, lr=3e-3, batch_size=8, seed=0)
    after = evaluate(model, processor, examples)
    assert stats.steps == 30 and stats.examples == 32
    assert after.loss < before.loss
    assert not model.training
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    set_adapter_state(model, initial)


def test_proximal_term_keeps_the_adapter_closer_to_the_reference():
    model, processor = load_peft_model("embedded", LoraSettings())
    reference = get_adapter_state(model)
    examples = make_examples(16, seed=5, question_types=(VARIANT_TYPE,))

    def distance(mu: float) -> float:
        set_adapter_state(model, reference)
        train_local(
            model, processor, examples, steps=10, lr=1e-2, batch_size=8, seed=0,
            proximal_mu=mu, reference=reference,
        )  # fmt: skip
        moved = get_adapter_state(model)
        return sum(((moved[k] - reference[k]) ** 2).sum().item() for k in reference)

    assert distance(100.0) < distance(0.0)
    set_adapter_state(model, reference)


def test_evaluate_reports_per_question_type():
    model, processor = load_base("embedded")
    examples = make_examples(12, seed=6)
    result = evaluate(model, processor, examples, batch_size=5)
    assert result.examples == 12
    assert sum(count for count, _ in result.by_type.values()) == 12
    assert 0.0 <= result.accuracy <= 1.0 and result.loss > 0
