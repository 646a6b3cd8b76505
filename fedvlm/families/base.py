"""What a VLM family is to fedvlm: how its examples become inputs, and where LoRA goes.

The base class serves every family whose processor takes ``images`` + chat-templated ``text``
and expands the image placeholder itself (LLaVA, Idefics3/SmolVLM, Gemma 3). Families whose
processor works differently (PaliGemma builds its own labels, Qwen2-VL flattens image patches)
override the few methods that differ, in their own module.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import AutoProcessor, PreTrainedModel, ProcessorMixin

IGNORE = -100
# Per-token tensors besides input_ids/attention_mask/labels; answer tokens get 0 in each
# (text, not image, and in PaliGemma's sense "not prefix" is handled by its own processor).
TOKEN_KEYS = ("token_type_ids", "mm_token_type_ids")
LM_LINEARS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
SIGLIP_CLIP_LINEARS = r"(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
_MARK = "\u2063"  # an invisible separator no template emits, to locate the answer slot


@dataclass(frozen=True)
class Prompts:
    """Prompt token ids per example (no padding) and the batch's image tensors, batch-first."""

    ids: list[list[int]]
    images: dict[str, torch.Tensor]
    per_token: dict[str, list[list[int]]]


@dataclass(frozen=True)
class Encoded:
    """Unpadded token rows of a batch; ``labels`` is None for prompts meant for generation."""

    ids: list[list[int]]
    labels: list[list[int]] | None
    images: dict[str, torch.Tensor]
    per_token: dict[str, list[list[int]]]


@dataclass(frozen=True)
class Family:
    """One transformers ``model_type`` and the conventions fedvlm needs about it.

    Parameters
    ----------
    model_type : str
        ``config.model_type`` of the checkpoints this family loads.
    language_model : str
        Name of the module holding the decoder (``language_model``, Idefics3's ``text_model``).
    vision_tower : str
        Name of the vision encoder module (``vision_tower``, ``vision_model``, ``visual``).
    vision_linears : str
        Regex alternation of the vision encoder's linear layers, for optional vision LoRA.
    projector : str
        Module that maps image features into the LM, trained in full (``modules_to_save``).
    projector_sees_examples : bool
        The projector's batch dimension is the examples' (one image per example). False when
        it sees image crops (Idefics3 splitting) or flattened patches (Qwen2-VL): per-example
        gradients of a trained projector, as DP-SGD needs, are then undefined there.
    end_of_answer : str | None
        Token that closes an assistant turn in the chat template (generation stops on it);
        ``None`` means the tokenizer's eos.
    processor_classes : tuple[str, ...]
        Processor class names this family encodes for (how ``encode`` finds the family).
    nested_images : bool
        The processor wants one list of images per prompt (Gemma 3).
    extra : str | None
        fedvlm optional extra whose packages this family's processor needs, if any.
    requires : tuple[str, ...]
        Importable modules that extra provides (checked before loading, with a clear error).
    """

    model_type: str
    language_model: str = "language_model"
    vision_tower: str = "vision_tower"
    vision_linears: str = SIGLIP_CLIP_LINEARS
    projector: str = "multi_modal_projector"
    projector_sees_examples: bool = True
    end_of_answer: str | None = None
    processor_classes: tuple[str, ...] = ()
    nested_images: bool = False
    extra: str | None = None
    requires: tuple[str, ...] = ()

    # --- LoRA -------------------------------------------------------------------------------
    def lora_targets(self, *, vision: bool = False) -> str:
        """Regex (full match) of the linear layers that get LoRA: the LM's attention and MLP,
        plus the vision encoder's when ``vision`` is true."""
        pattern = rf".*\.{self.language_model}\..*\.{LM_LINEARS}"
        if vision:
            pattern += rf"|.*\.{self.vision_tower}\..*\.{self.vision_linears}"
        return pattern

    # --- text -------------------------------------------------------------------------------
    def prompt(self, processor: ProcessorMixin, question: str) -> str:
        """The chat-formatted user turn (image + question), ending where the answer starts."""
        return processor.apply_chat_template(
            _messages(question), add_generation_prompt=True, tokenize=False
        )

    def answer_prefix(self, processor: ProcessorMixin) -> str:
        """Text the template puts between the generation prompt and the answer (often a space).

        Derived from the template itself: render a conversation whose answer is a marker and
        compare it with the generation prompt.
        """
        prompt = self.prompt(processor, "q")
        full = processor.apply_chat_template(
            _messages("q", answer=_MARK), add_generation_prompt=False, tokenize=False
        )
        if _MARK in full and full.startswith(prompt):
            return full[len(prompt) : full.index(_MARK)]
        return ""

    def end_id(self, tokenizer) -> int:
        """Id of the token that ends an answer."""
        if self.end_of_answer is None:
            return tokenizer.eos_token_id
        return tokenizer.convert_tokens_to_ids(self.end_of_answer)

    def answer_ids(self, processor: ProcessorMixin, answers: Sequence[str]) -> list[list[int]]:
        """Token ids of each answer as the template writes it, closed by ``end_id``."""
        tokenizer = processor.tokenizer
        prefix, end = self.answer_prefix(processor), self.end_id(tokenizer)
        return [
            tokenizer(prefix + a, add_special_tokens=False)["input_ids"] + [end] for a in answers
        ]

    # --- processor --------------------------------------------------------------------------
    def images_arg(self, images: list[Image.Image]) -> list:
        """Images as the processor wants them (one per prompt)."""
        return [[image] for image in images] if self.nested_images else images

    def encode_prompts(
        self, processor: ProcessorMixin, images: list[Image.Image], questions: Sequence[str]
    ) -> Prompts:
        """Run the processor on the prompts; recover each prompt's unpadded ids."""
        out = processor(
            images=self.images_arg(images),
            text=[self.prompt(processor, q) for q in questions],
            return_tensors="pt",
            padding=True,
        )
        return _split(out, image_keys=("pixel_values", "pixel_attention_mask"))

    def encode(
        self,
        processor: ProcessorMixin,
        images: list[Image.Image],
        questions: Sequence[str],
        answers: Sequence[str] | None,
    ) -> Encoded:
        """Prompt (+ answer) token ids per example, labels only on the answer tokens."""
        prompts = self.encode_prompts(processor, images, questions)
        if answers is None:
            return Encoded(prompts.ids, None, prompts.images, prompts.per_token)
        answer_ids = self.answer_ids(processor, answers)
        pairs = list(zip(prompts.ids, answer_ids, strict=True))
        per_token = {
            k: [v + [0] * len(a) for v, a in zip(rows, answer_ids, strict=True)]
            for k, rows in prompts.per_token.items()
        }
        return Encoded(
            ids=[p + a for p, a in pairs],
            labels=[[IGNORE] * len(p) + a for p, a in pairs],
            images=prompts.images,
            per_token=per_token,
        )

    def load_processor(self, path: str) -> ProcessorMixin:
        """The processor saved with the checkpoint in ``path``."""
        return AutoProcessor.from_pretrained(path)

    # --- model ------------------------------------------------------------------------------
    def model_inputs(
        self, batch: dict[str, torch.Tensor], model: PreTrainedModel
    ) -> dict[str, torch.Tensor]:
        """The batch on the model's device, images in its compute dtype."""
        device, dtype = compute_device_dtype(model)
        return {
            k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
            for k, v in batch.items()
        }


def compute_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter.

    The first floating one, because a 4-bit base stores many weights as uint8.
    """
    for param in model.parameters():
        if param.is_floating_point():
            return param.device, param.dtype
    raise ValueError("model has no floating-point parameters")


def _messages(question: str, answer: str | None = None) -> list[dict]:
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    if answer is None:
        return [user]
    return [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def _split(out, *, image_keys: Sequence[str]) -> Prompts:
    """Per-example unpadded ids and per-token rows from a right-padded processor output."""
    lengths = out["attention_mask"].sum(1).tolist()
    if out["attention_mask"].shape[1] and bool((out["attention_mask"][:, 0] == 0).any()):
        raise ValueError("expected right padding from the processor")
    ids = [row[:n].tolist() for row, n in zip(out["input_ids"], lengths, strict=True)]
    per_token = {
        k: [row[:n].tolist() for row, n in zip(out[k], lengths, strict=True)]
        for k in TOKEN_KEYS
        if k in out
    }
    images = {k: out[k] for k in image_keys if k in out}
    return Prompts(ids, images, per_token)
