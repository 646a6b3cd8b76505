"""Turn VQA examples into model inputs, and score answers.

A prompt is the processor's chat template with one user turn (image + question) and the
generation prompt for the assistant; the answer tokens and the end-of-sequence token are appended
after it. Only those appended tokens carry a label, so the loss and the accuracy are about the
answer, never about reproducing the question.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, ProcessorMixin

from fedvlm.data.example import VQAExample

IGNORE = -100


def prompt_text(processor: ProcessorMixin, question: str) -> str:
    """The chat-formatted user turn for ``question``, ending where the answer starts."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode(
    processor: ProcessorMixin, examples: Sequence[VQAExample], *, with_answer: bool = True
) -> dict[str, torch.Tensor]:
    """Batch ``examples`` into right-padded ``input_ids``, ``attention_mask``, ``pixel_values``
    and ``labels``.

    ``labels`` is -100 everywhere except on the answer tokens and the eos after them. With
    ``with_answer=False`` the sequences stop after the prompt (for generation) and no labels
    are returned.
    """
    tokenizer = processor.tokenizer
    prompts = processor(
        images=[ex.image.convert("RGB") for ex in examples],
        text=[prompt_text(processor, ex.question) for ex in examples],
        return_tensors=None,
    )
    sequences, targets = [], []
    for ids, ex in zip(prompts["input_ids"], examples, strict=True):
        answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        if not with_answer:
            answer = []
        sequences.append(list(ids) + answer)
        targets.append([IGNORE] * len(ids) + answer)
    length = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id
    batch = {
        "input_ids": torch.tensor([s + [pad] * (length - len(s)) for s in sequences]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sequences]),
        "pixel_values": torch.from_numpy(np.stack(prompts["pixel_values"])),
    }
    if with_answer:
        batch["labels"] = torch.tensor([t + [IGNORE] * (length - len(t)) for t in targets])
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
    param = next(model.parameters())
    batch = {k: v.to(param.device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(param.dtype)
    labels = batch.pop("labels")
    logits = model(**batch).logits
    return answer_loss(logits, labels)
