"""Tiny, randomly initialised copies of each real VLM family, built offline for the tests.

Each builder returns ``(model, processor)`` of the family's real transformers classes, with
vision and text towers of a few thousand parameters and a byte-level BPE tokenizer trained
locally on a few words (the approach of ``fedvlm.embedded.build``), carrying the special tokens
and a chat template shaped like the family's published one. Saved with ``save_pretrained``, a
copy loads back through ``fedvlm.vlm.load_base`` exactly like a hub checkpoint would.
"""

from collections.abc import Callable

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    GemmaConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from fedvlm.embedded.build import train_tokenizer
from fedvlm.families import QwenImageTextProcessor

IMAGE = 32  # pixels per side of every test image
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)


def tokenizer(special: list[str], template: str | None, **kwargs) -> PreTrainedTokenizerFast:
    """The embedded build's locally trained BPE, ``special`` tokens first (ids 0, 1, ...)."""
    return train_tokenizer(special, template, **kwargs)


def _turns(user: str, assistant: str, end: str, image: str, generation: str) -> str:
    """A Jinja chat template: ``user``/``assistant`` role prefixes, ``end`` after each turn."""

    def text(value: str) -> str:
        return "{{ " + repr(value) + " }}"

    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        + text(user)
        + "{%- else -%}"
        + text(assistant)
        + "{%- endif -%}"
        "{%- for item in message['content'] -%}"
        "{%- if item['type'] == 'image' -%}" + text(image) + ""
        "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
        "{%- endfor -%}" + text(end) + "{%- endfor -%}"
        "{%- if add_generation_prompt -%}" + text(generation) + "{%- endif -%}"
    )


def llava_siglip() -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA with a SigLIP vision tower (no class token) and a Llama LM."""
    template = _turns("USER: ", "ASSISTANT: ", "</s>", "<image>\n", "ASSISTANT:")
    tok = tokenizer(
        ["<pad>", "</s>", "<image>"],
        template,
        pad_token="<pad>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=template,
    )
    config = LlavaConfig(
        vision_config=SiglipVisionConfig(image_size=IMAGE, patch_size=8, **VISION),
        text_config=LlamaConfig(
            vocab_size=len(tok), pad_token_id=0, eos_token_id=1, bos_token_id=None, **TEXT
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE // 8) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    return LlavaForConditionalGeneration(config), processor


def idefics3() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Idefics3 (SmolVLM's architecture), image splitting on: 2 x 2 crops plus a global one."""
    template = _turns(
        "<|im_start|>User:",
        "Assistant: ",
        "<end_of_utterance>\n",
        "<image>",
        "Assistant:",
    )
    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<image>",
        "<fake_token_around_image>",
        "<end_of_utterance>",
        "<global-img>",
        *rows,
    ]
    tok = tokenizer(special, template, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True,
        size={"longest_edge": 2 * IMAGE},
        max_image_size={"longest_edge": IMAGE},
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=4, chat_template=template
    )
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(image_size=IMAGE, patch_size=8, **VISION),
        text_config=LlamaConfig(
            vocab_size=len(tok), pad_token_id=0, eos_token_id=2, bos_token_id=None, **TEXT
        ),
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=0,
    )
    return Idefics3ForConditionalGeneration(config), processor


def _qwen_processor() -> QwenImageTextProcessor:
    """Image processor + tokenizer: ``Qwen2VLProcessor`` itself needs torchvision (see
    ``fedvlm.families.qwen2_vl``), which does not install beside the CPU torch wheel."""
    template = _turns(
        "<|im_start|>user\n",
        "<|im_start|>assistant\n",
        "<|im_end|>\n",
        "<|vision_start|><|image_pad|><|vision_end|>",
        "<|im_start|>assistant\n",
    )
    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tok = tokenizer(special, template, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=IMAGE * IMAGE, max_pixels=IMAGE * IMAGE, patch_size=8, merge_size=2
    )
    return QwenImageTextProcessor(image_processor, tok, template)


def _qwen_ids(processor: QwenImageTextProcessor) -> dict[str, int]:
    ids = processor.tokenizer.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def _qwen_text(processor: QwenImageTextProcessor) -> dict:
    return dict(
        vocab_size=len(processor.tokenizer),
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e4},
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=None,
        **TEXT,
    )


def qwen2_vl() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Qwen2-VL: native-resolution vision with 2 x 2 patch merging, M-RoPE text model."""
    processor = _qwen_processor()
    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=4, patch_size=8, mlp_ratio=2)
    config = Qwen2VLConfig(
        vision_config=vision, text_config=_qwen_text(processor), **_qwen_ids(processor)
    )
    return Qwen2VLForConditionalGeneration(config), processor


def qwen2_5_vl() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Qwen2.5-VL: as Qwen2-VL with a windowed SwiGLU vision tower."""
    processor = _qwen_processor()
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        patch_size=8,
        out_hidden_size=32,
        window_size=16,
        fullatt_block_indexes=[0],
    )
    config = Qwen2_5_VLConfig(
        vision_config=vision, text_config=_qwen_text(processor), **_qwen_ids(processor)
    )
    return Qwen2_5_VLForConditionalGeneration(config), processor


def paligemma() -> tuple[PreTrainedModel, ProcessorMixin]:
    """PaliGemma: SigLIP + Gemma, prefix-LM; the processor adds 1,152 location tokens."""
    tok = tokenizer(
        ["<pad>", "<eos>", "<bos>", "<image>"],
        None,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    image_processor.image_seq_length = (IMAGE // 8) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    text = GemmaConfig(
        vocab_size=len(tok),
        num_key_value_heads=1,
        head_dim=8,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        **TEXT,
    )
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            image_size=IMAGE, patch_size=8, projection_dim=32, **VISION
        ),
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        projection_dim=32,
    )
    return PaliGemmaForConditionalGeneration(config), processor


def gemma3() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Gemma 3: SigLIP pooled to a few soft tokens between begin/end-of-image markers."""
    template = _turns(
        "<start_of_turn>user\n",
        "<start_of_turn>model\n",
        "<end_of_turn>\n",
        "<start_of_image>",
        "<start_of_turn>model\n",
    )
    special = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ]
    tok = tokenizer(
        special,
        template,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_length=4, chat_template=template
    )
    text = Gemma3TextConfig(
        vocab_size=len(tok),
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=16,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        **TEXT,
    )
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(image_size=IMAGE, patch_size=8, **VISION),
        text_config=text,
        mm_tokens_per_image=4,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    return Gemma3ForConditionalGeneration(config), processor


BUILDERS: dict[str, Callable[[], tuple[PreTrainedModel, ProcessorMixin]]] = {
    "llava": llava_siglip,
    "idefics3": idefics3,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "paligemma": paligemma,
    "gemma3": gemma3,
}


def build(model_type: str, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The tiny copy of ``model_type``, with weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return BUILDERS[model_type]()
