"""Qwen2-VL and Qwen2.5-VL: native-resolution image patches, flattened across the batch.

Their processor class also needs torchvision's video processor, which is not always installable
(it is not beside the CPU torch wheel fedvlm's tests use). Images are all this family needs, so
it loads the checkpoint's image processor and tokenizer directly and does the processor's one
text step itself: each ``<|image_pad|>`` becomes ``grid_t * grid_h * grid_w / merge_size**2``
copies. Image patches are stored padded per example so a batch can be sliced by rows, and
flattened again before the forward pass.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedModel

from fedvlm.families.base import Family, Prompts

IMAGE_PAD = "<|image_pad|>"


@dataclass
class QwenImageTextProcessor:
    """The image half of a Qwen2-VL processor: image processor, tokenizer, chat template."""

    image_processor: Any
    tokenizer: Any
    chat_template: str | None = None

    @classmethod
    def from_pretrained(cls, path: str) -> "QwenImageTextProcessor":
        """Load from a checkpoint folder; the chat template may sit beside the tokenizer."""
        folder = Path(path)
        template = None
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        elif (folder / "chat_template.json").is_file():
            template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
        return cls(
            AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path), template
        )

    def save_pretrained(self, path: str) -> None:
        """Write the parts so that ``from_pretrained`` (and transformers) read them back."""
        self.image_processor.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        if self.chat_template:
            (Path(path) / "chat_template.jinja").write_text(self.chat_template)

    def apply_chat_template(self, messages: list[dict], **kwargs) -> str:
        """The tokenizer's chat templating, with this checkpoint's template."""
        template = self.chat_template or self.tokenizer.chat_template
        return self.tokenizer.apply_chat_template(messages, chat_template=template, **kwargs)


class QwenVLFamily(Family):
    """Qwen2-VL / Qwen2.5-VL (M-RoPE decoder, patch-merging vision tower)."""

    def load_processor(self, path: str) -> QwenImageTextProcessor:
        """Image processor + tokenizer, without the video processor (see the module doc)."""
        return QwenImageTextProcessor.from_pretrained(path)

    def encode_prompts(
        self, processor: QwenImageTextProcessor, images: list[Image.Image], questions: Sequence[str]
    ) -> Prompts:
        """Expand the image pad per image grid, tokenize, and pad the patches per example."""
        vision = processor.image_processor(images=images, return_tensors="pt")
        grids = vision["image_grid_thw"]
        merge = processor.image_processor.merge_size**2
        tokenizer = processor.tokenizer
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        ids = []
        for question, grid in zip(questions, grids, strict=True):
            text = self.prompt(processor, question)
            if text.count(IMAGE_PAD) != 1:
                raise ValueError(f"chat template gave {text.count(IMAGE_PAD)} image pads, not 1")
            text = text.replace(IMAGE_PAD, IMAGE_PAD * (int(grid.prod()) // merge))
            ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        counts = grids.prod(-1).tolist()
        patches = torch.split(vision["pixel_values"], counts)
        padded = torch.zeros(len(images), max(counts), patches[0].shape[-1], dtype=patches[0].dtype)
        for row, chunk in enumerate(patches):
            padded[row, : len(chunk)] = chunk
        types = [[int(t == image_id) for t in row] for row in ids]
        return Prompts(
            ids, {"pixel_values": padded, "image_grid_thw": grids}, {"mm_token_type_ids": types}
        )

    def model_inputs(
        self, batch: dict[str, torch.Tensor], model: PreTrainedModel
    ) -> dict[str, torch.Tensor]:
        """Flatten the per-example patches back into the model's (patches, dim) layout."""
        inputs = dict(batch)
        if "pixel_values" in inputs:
            counts = inputs["image_grid_thw"].prod(-1).tolist()
            inputs["pixel_values"] = torch.cat(
                [row[:n] for row, n in zip(inputs["pixel_values"], counts, strict=True)]
            )
        return super().model_inputs(inputs, model)
