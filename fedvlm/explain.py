"""Explanations that stay on site: which image regions the model's answer rests on.

For a validation example the model answers the question (greedy), then the answer's
log-likelihood is differentiated with respect to the image's pixel values and multiplied by
them (gradient x input, summed over channels, absolute value, averaged over each of the
vision encoder's patches, since the encoder sees patches). This needs no attention
weights, so it works whatever attention implementation the model uses, and it is exact for
the pixels the processor fed to the model. The map is resized back onto the original image,
so it has the image's shape; the processor's center crop, if any, is undone approximately.

Everything is written as PNG files under the folder the site names; nothing here talks to
the coordinator or to any network.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import PeftModel  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import PreTrainedModel, ProcessorMixin  # noqa: E402

from fedvlm.batching import answer_loss, encode, generate_answers  # noqa: E402
from fedvlm.data.example import VQAExample  # noqa: E402
from fedvlm.errors import FedVLMError  # noqa: E402
from fedvlm.families import family_for_config  # noqa: E402
from fedvlm.vlm import load_base  # noqa: E402


@dataclass(frozen=True)
class Explanation:
    """One explained example: what was asked, answered and expected, and the heat map."""

    question: str
    answer: str  # the model's (greedy) answer
    expected: str
    heatmap: np.ndarray  # (image height, image width), in [0, 1]


def saliency(model: PreTrainedModel, processor: ProcessorMixin, example: VQAExample) -> np.ndarray:
    """Gradient x input of ``example.answer``'s log-likelihood, on the image's own grid.

    Returns
    -------
    numpy.ndarray
        Shape ``(example.image.height, example.image.width)``, scaled to [0, 1] (all zeros
        if the answer does not depend on the pixels at all).

    Raises
    ------
    FedVLMError
        If the model's processor does not give pixel values as (batch, channels, h, w)
        (e.g. Qwen2-VL's flattened patches).
    """
    batch = encode(processor, [example])
    pixels = batch.get("pixel_values")
    if pixels is None or pixels.ndim != 4:
        raise FedVLMError(
            "explanations need pixel values shaped (batch, channels, height, width); "
            f"this model's processor gives {None if pixels is None else tuple(pixels.shape)}"
        )
    labels = batch.pop("labels")
    model.eval()
    inputs = family_for_config(model.config).model_inputs(batch, model)
    leaf = inputs["pixel_values"].detach().requires_grad_(True)
    inputs["pixel_values"] = leaf
    loss, _ = answer_loss(model(**inputs).logits, labels.to(leaf.device))
    (grad,) = torch.autograd.grad(-loss.sum(), leaf)  # towards a more likely answer
    attribution = (grad * leaf).detach().float().sum(dim=1).abs()
    # Per vision patch: the encoder sees patches, and single pixels make a speckled map.
    patch = getattr(getattr(model.config, "vision_config", None), "patch_size", 1)
    attribution = F.avg_pool2d(attribution[None], patch, ceil_mode=True)[0, 0].cpu().numpy()
    top = float(attribution.max())
    scaled = attribution / top if top > 0 else attribution
    resized = Image.fromarray(scaled.astype(np.float32), mode="F").resize(
        example.image.size, Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def explain(
    model: PreTrainedModel, processor: ProcessorMixin, examples: Sequence[VQAExample]
) -> list[Explanation]:
    """The model's answer to each example and the heat map of what that answer rests on."""
    explained = []
    for example in examples:
        answer = generate_answers(model, processor, [example])[0]
        target = example if not answer else _with_answer(example, answer)
        explained.append(
            Explanation(
                example.question, answer, example.answer, saliency(model, processor, target)
            )
        )
    return explained


def _with_answer(example: VQAExample, answer: str) -> VQAExample:
    return VQAExample(
        example.image, example.question, answer, example.question_type, example.attributes
    )


def render(example: VQAExample, explanation: Explanation, path: Path) -> Path:
    """Write the image, the heat map over it, the question and both answers as one PNG."""
    image = np.asarray(example.image.convert("RGB"))
    fig, axes = plt.subplots(1, 2, figsize=(7, 4))
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(image)
    axes[1].imshow(explanation.heatmap, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[1].set_title("what the answer rests on")
    for ax in axes:
        ax.axis("off")
    verdict = "correct" if explanation.answer == explanation.expected else "wrong"
    fig.suptitle(
        f"Q: {explanation.question}\nmodel: {explanation.answer!r} ({verdict}), "
        f"expected: {explanation.expected!r}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def write_explanations(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    examples: Sequence[VQAExample],
    out: Path,
) -> list[Path]:
    """Explain ``examples`` into ``out``: one PNG each plus `index.json` (text only)."""
    out = Path(out)
    paths, index = [], []
    for number, (example, explanation) in enumerate(
        zip(examples, explain(model, processor, examples), strict=True)
    ):
        name = f"explanation-{number:03d}.png"
        paths.append(render(example, explanation, out / name))
        index.append(
            {
                "file": name,
                "question": explanation.question,
                "answer": explanation.answer,
                "expected": explanation.expected,
                "question_type": example.question_type,
            }
        )
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths


def load_adapter(
    adapter_dir: Path, base_model: str | None = None
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A saved run adapter (PEFT folder) on its base model, read from local files only.

    The base is ``base_model`` or the adapter's recorded ``base_model_name_or_path``.

    Raises
    ------
    FedVLMError
        If ``adapter_dir`` is not a PEFT adapter folder.
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise FedVLMError(f"{adapter_dir}: no adapter_config.json; pass a run's adapter folder")
    base = base_model or json.loads(config_path.read_text())["base_model_name_or_path"]
    model, processor = load_base(base)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval(), processor
