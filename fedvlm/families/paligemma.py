"""PaliGemma: no chat template; its processor appends the answer (``suffix``) and builds labels.

The prompt follows PaliGemma's task-prefix convention (``"answer en <question>"``); the
processor writes ``<image>... <bos> prompt \\n`` then the suffix and eos, and labels exactly the
suffix and eos (``token_type_ids`` 1), which is also what the prefix-LM attention needs.
"""

from collections.abc import Sequence

from PIL import Image
from transformers import ProcessorMixin

from fedvlm.families.base import Encoded, Family, _split

TASK_PREFIX = "answer en "


class PaliGemmaFamily(Family):
    """PaliGemma 1 and 2 (SigLIP + Gemma, prefix-LM)."""

    def prompt(self, processor: ProcessorMixin, question: str) -> str:
        """One image placeholder, PaliGemma's VQA task prefix and the question; the processor
        expands the placeholder and adds ``<bos>`` after it and a newline at the end."""
        return processor.image_token + TASK_PREFIX + question

    def encode(
        self,
        processor: ProcessorMixin,
        images: list[Image.Image],
        questions: Sequence[str],
        answers: Sequence[str] | None,
    ) -> Encoded:
        """The processor's own sequences; with answers, its labels (suffix + eos only)."""
        out = processor(
            images=images,
            text=[self.prompt(processor, q) for q in questions],
            suffix=list(answers) if answers is not None else None,
            return_tensors="pt",
            padding=True,
        )
        rows = _split(out, image_keys=("pixel_values",))
        labels = None
        if answers is not None:
            lengths = out["attention_mask"].sum(1).tolist()
            labels = [row[:n].tolist() for row, n in zip(out["labels"], lengths, strict=True)]
        return Encoded(rows.ids, labels, rows.images, rows.per_token)
