"""Local training and evaluation of a (PEFT) VLM on VQA examples.

One readable function each, in the spirit of nanoGPT: what a site does with its data in a round.
Examples are encoded once up front (the image processor is the slow part), then batches are
index draws from a seeded generator, so a site's round is reproducible from its seed.
"""

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import torch
from transformers import PreTrainedModel, ProcessorMixin

from fedvlm.adapter import Adapter, adapter_parameters
from fedvlm.batching import SEQUENCE_KEYS, encode, score
from fedvlm.data.example import VQAExample
from fedvlm.errors import DataError


@dataclass
class TrainStats:
    """What one call of ``train_local`` did; losses are answer-token cross-entropies."""

    steps: int
    examples: int
    mean_loss: float
    first_loss: float
    last_loss: float
    seconds: float

    @classmethod
    def from_losses(
        cls, losses: Sequence[float], *, steps: int, examples: int, seconds: float, **extra: Any
    ) -> Self:
        """Summarise the per-step losses of a round (NaN where no step had a loss).

        ``extra`` fills a subclass's own fields, so plain and DP training report alike.
        """
        return cls(
            steps=steps,
            examples=examples,
            mean_loss=sum(losses) / len(losses) if losses else float("nan"),
            first_loss=losses[0] if losses else float("nan"),
            last_loss=losses[-1] if losses else float("nan"),
            seconds=seconds,
            **extra,
        )


@dataclass
class EvalStats:
    """Loss and exact-match accuracy, overall and as (count, accuracy) per question type."""

    examples: int
    loss: float
    accuracy: float
    by_type: dict[str, tuple[int, float]]


def take(batch: Mapping[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``index`` of an encoded batch, with the columns that are padding everywhere cut."""
    rows = {k: v[index] for k, v in batch.items()}
    length = int(rows["attention_mask"].sum(1).max())
    for key in SEQUENCE_KEYS:
        if key in rows:
            rows[key] = rows[key][:, :length]
    return rows


def proximal_term(model: torch.nn.Module, reference: Adapter) -> torch.Tensor:
    """FedProx's ``||w - w_ref||^2`` over the adapter parameters (without the mu/2 factor)."""
    live = adapter_parameters(model)
    return sum(
        ((param - reference[key].to(param.device, param.dtype)) ** 2).sum()
        for key, param in live.items()
    )


def train_local(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    examples: Sequence[VQAExample],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    proximal_mu: float = 0.0,
    reference: Adapter | None = None,
) -> TrainStats:
    """Run ``steps`` AdamW steps on the parameters that require grad; leave ``model`` in eval.

    Batches are drawn with replacement across steps (without replacement within a batch) from a
    ``torch.Generator`` seeded with ``seed``. With ``proximal_mu > 0`` the FedProx term
    ``mu/2 * ||w - w_ref||^2`` pulls the adapter towards ``reference`` (the global adapter).
    """
    if not examples:
        raise DataError("train_local: no training examples")
    if proximal_mu > 0 and reference is None:
        raise ValueError("proximal_mu > 0 needs the reference (global) adapter")
    start = time.perf_counter()
    data = encode(processor, examples)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    size = min(batch_size, len(examples))
    losses = []
    model.train()
    for _ in range(steps):
        index = torch.randperm(len(examples), generator=generator)[:size]
        answer_loss, _ = score(model, take(data, index))
        loss = answer_loss.mean()
        if proximal_mu > 0:
            loss = loss + proximal_mu / 2 * proximal_term(model, reference)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(answer_loss.mean().item())
    model.eval()
    return TrainStats.from_losses(
        losses, steps=steps, examples=len(examples), seconds=time.perf_counter() - start
    )


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    examples: Sequence[VQAExample],
    *,
    batch_size: int = 32,
) -> EvalStats:
    """Mean answer loss and exact-match accuracy (greedy-equivalent, see ``score``)."""
    if not examples:
        raise DataError("evaluate: no evaluation examples")
    model.eval()
    losses, hits = [], []
    for i in range(0, len(examples), batch_size):
        loss, hit = score(model, encode(processor, examples[i : i + batch_size]))
        losses += loss.tolist()
        hits += hit.tolist()
    groups: dict[str, list[bool]] = defaultdict(list)
    for ex, hit in zip(examples, hits, strict=True):
        groups[ex.question_type].append(hit)
    return EvalStats(
        examples=len(examples),
        loss=sum(losses) / len(losses),
        accuracy=sum(hits) / len(hits),
        by_type={k: (len(v), sum(v) / len(v)) for k, v in sorted(groups.items())},
    )
