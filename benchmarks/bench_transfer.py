"""Does a base VLM's vision transfer to real images? Probes and pooled LoRA on scikit-learn digits.

Where a federated run on real images stays at chance, this says which part is at fault, on one
machine in about a minute (plus the fine-tuning steps asked for):

1. linear probes (logistic regression) on the frozen vision tower's patch features of every
   layer, mean-pooled and flattened, on its class token, and on the projector's output over
   the image tokens the language model is given: if the flattened features separate the digits
   but the pooled ones do not, the information is there but spread over the patches, and the
   language model has to learn to gather it;
2. the same LoRA the federation trains (``--lora-vision`` adds the vision tower), trained on the
   pooled site images in one process (an upper bound for the federated run with as many steps),
   its held-out accuracy printed every ``--chunk`` steps.

The images and the held-out split are those of ``simulations.export_digits`` (seeded, stratified).

Run: .venv/bin/python benchmarks/bench_transfer.py [--model embedded] [--steps 300]
"""

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from fedvlm.data.example import VQAExample
from fedvlm.lora import LoraSettings, apply_lora
from fedvlm.training import evaluate, train_local
from fedvlm.vlm import load_base
from simulations.export_digits import QUESTION, QUESTION_TYPE, digit_image, heldout_split


def probe_accuracy(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray):
    """Held-out accuracy of a logistic regression fitted on ``features[train]``."""
    scaled = (features - features[train].mean(0)) / (features[train].std(0) + 1e-6)
    classifier = LogisticRegression(max_iter=500).fit(scaled[train], labels[train])
    return classifier.score(scaled[test], labels[test])


@torch.no_grad()
def feature_sets(model, processor, images) -> dict[str, np.ndarray]:
    """Each vision layer's patch features (mean-pooled, flattened) and class token, and the
    projector's output over the image tokens the language model is given."""
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    out = model.model.vision_tower(pixels, output_hidden_states=True)
    sets = {"raw pixels (model input)": pixels.flatten(1).numpy()}
    for layer, hidden in enumerate(out.hidden_states):
        patches = hidden[:, 1:]
        sets[f"vision layer {layer}, mean-pooled"] = patches.mean(1).numpy()
        sets[f"vision layer {layer}, flattened"] = patches.flatten(1).numpy()
        sets[f"vision layer {layer}, class token"] = hidden[:, 0].numpy()
    last = out.hidden_states[-1]
    if getattr(processor, "vision_feature_select_strategy", "default") == "default":
        last = last[:, 1:]  # this strategy drops the class token before the projector
    projected = model.model.multi_modal_projector(last)
    sets["projector, mean-pooled"] = projected.mean(1).numpy()
    sets["projector, flattened"] = projected.flatten(1).numpy()
    return sets


def main(argv: list[str] | None = None) -> None:
    """Print the probe table, then the pooled fine-tuning curve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--steps", type=int, default=300, help="pooled LoRA steps (0: none)")
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-vision", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    digits = load_digits()
    labels = digits.target
    train, test = heldout_split(labels, 0.2, args.seed)
    images = [digit_image(pixels).convert("RGB") for pixels in digits.images]
    model, processor = load_base(args.model)

    print(f"Linear probes on {args.model}: {len(train)} digits to fit, {len(test)} held out")
    print(f"{'features':<34} {'dims':>6} {'accuracy':>9}")
    for name, features in feature_sets(model, processor, images).items():
        accuracy = probe_accuracy(features, labels, train, test)
        print(f"{name:<34} {features.shape[1]:>6} {accuracy:>9.3f}", flush=True)
    if args.steps <= 0:
        return

    def examples(rows: np.ndarray) -> list[VQAExample]:
        return [VQAExample(images[i], QUESTION, str(labels[i]), QUESTION_TYPE) for i in rows]

    peft_model = apply_lora(model, LoraSettings(vision=args.lora_vision), seed=args.seed)
    pooled, held = examples(train), examples(test)
    print(
        f"\nPooled LoRA (vision {args.lora_vision}, lr {args.lr}, batch {args.batch_size}) "
        f"on all {len(pooled)} site images; held-out accuracy"
    )
    print(f"{'steps':>6} {'train loss':>11} {'held-out':>9} {'seconds':>8}")
    start = time.perf_counter()
    for done in range(0, args.steps, args.chunk):
        stats = train_local(
            peft_model,
            processor,
            pooled,
            steps=min(args.chunk, args.steps - done),
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed + done,
        )
        result = evaluate(peft_model, processor, held)
        print(
            f"{done + stats.steps:>6} {stats.mean_loss:>11.3f} {result.accuracy:>9.3f} "
            f"{time.perf_counter() - start:>8.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
