"""Turn VQA examples into model inputs, and score answers.

A prompt is the processor's chat template with one user turn (image + question) and the
generation prompt for the assistant; the answer tokens and the token that ends an answer are
appended after it. Only those appended tokens carry a label, so the loss and the accuracy are
about the answer, never about reproducing the question. What differs between architectures
(PaliGemma's suffix, Qwen2-VL's flattened patches, ...) lives in ``fedvlm.families``.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, ProcessorMixin

from fedvlm.data.example import VQAExample
from fedvlm.families import IGNORE, TOKEN_KEYS, family_for_config, family_for_processor

# Columns indexed by token position (sliced together when padding is trimmed).
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels", *TOKEN_KEYS)


def encode(
    processor: ProcessorMixin, examples: Sequence[VQAExample], *, with_answer: bool = True
) -> dict[str, torch.Tensor]:
    """Batch ``examples`` into right-padded ``input_ids``, ``attention_mask``, image tensors
    and ``labels``.

    The family of ``processor`` (``fedvlm.families``) builds each sequence; ``labels`` is -100
    everywhere except on the answer tokens and the token that ends the answer. With
    ``with_answer=False`` the sequences stop after the prompt (for generation) and no labels
    are returned.
    """
    family = family_for_processor(processor)
    encoded = family.encode(
        processor,
        [ex.image.convert("RGB") for ex in examples],
        [ex.question for ex in examples],
        [ex.answer for ex in examples] if with_answer else None,
    )
    length = max(len(s) for s in encoded.ids)

    def pad(rows: list[list[int]], value: int) -> torch.Tensor:
        return torch.tensor([r + [value] * (length - len(r)) for r in rows])

    batch = {
        "input_ids": pad(encoded.ids, processor.tokenizer.pad_token_id),
        "attention_mask": pad([[1] * len(s) for s in encoded.ids], 0),
        **encoded.images,
        **{k: pad(rows, 0) for k, rows in encoded.per_token.items()},
    }
    if encoded.labels is not None:
        batch["labels"] = pad(encoded.labels, IGNORE)
    return batch


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example mean cross-entropy over labelled positions, and exact-match correctness.

    Position ``t`` of ``logits`` predicts token ``t + 1``, hence the shift.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE
    token_loss = F.cross_entropy(
        logits.transpose(1, 2), labels.clamp(min=0), reduction="none"
    )  # (batch, positions)
    loss = (token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)
    hit = (logits.argmax(-1) == labels) | ~mask
    return loss, hit.all(1)


def score(
    model: PreTrainedModel, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example mean answer loss and exact-match correctness, teacher-forced.

    An example counts as correct iff the argmax at every answer position (eos included) is the
    answer token. Because each position is conditioned on the correct previous tokens, this is
    exactly what greedy decoding of the answer would produce, at the cost of one forward pass.
    """
    batch = dict(batch)
    labels = batch.pop("labels")
    inputs = family_for_config(model.config).model_inputs(batch, model)
    logits = model(**inputs).logits
    return answer_loss(logits, labels.to(logits.device))


def left_padded(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same batch with its token columns moved to left padding, as ``generate`` needs."""
    lengths = batch["attention_mask"].sum(1)
    width = batch["attention_mask"].shape[1]
    out = dict(batch)
    for key in SEQUENCE_KEYS:
        if key in batch:
            out[key] = torch.stack(
                [row.roll(width - int(n)) for row, n in zip(batch[key], lengths, strict=True)]
            )
    return out


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    examples: Sequence[VQAExample],
    *,
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy answers to the examples' questions, decoded up to the family's end token.

    ``score`` gives the same verdict in one forward pass; this is for reading what a model
    says, and for checking that a loaded checkpoint really decodes.
    """
    family = family_for_processor(processor)
    tokenizer = processor.tokenizer
    batch = left_padded(encode(processor, examples, with_answer=False))
    inputs = family_for_config(model.config).model_inputs(batch, model)
    end = family.end_id(tokenizer)
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=end,
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = out[:, batch["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]
