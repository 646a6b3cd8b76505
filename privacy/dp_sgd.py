"""DP-SGD at a site: Opacus on the PEFT model, one call per round.

Same contract as `fedvlm.training.train_local` (AdamW on the parameters that require grad,
answer-token loss), with what DP-SGD changes:

- batches are Poisson samples (each example independently with probability q, q as Opacus'
  `DPDataLoader` derives it), which the privacy amplification of the accountant assumes;
- each example's gradient is clipped to ``max_grad_norm`` and Gaussian noise of std
  ``noise_multiplier * max_grad_norm`` is added to their sum (Opacus' `DPOptimizer`);
- an empty Poisson batch skips the forward (the VLM cannot run on zero images), gives every
  trainable parameter a zero-size ``grad_sample`` and still calls ``optimizer.step()``: the
  noise is still added and the accountant still counts the step;
- the Opacus hooks are removed afterwards, because the model is cached per process and is
  evaluated (and trained again) after this call.

Randomness: the Poisson draws and the noise must be secret from the coordinator (the seed it
hands out for non-DP batches would let it undo both) and unpredictable from what is released,
so both come from a CSPRNG keyed by the OS (`privacy.secure_noise.SecureRandom`), which
replaces Opacus' noise (`use_secure_noise`) and its loader's sampling; the caller's torch
stream is left untouched. ``rng_seed`` fixes them for tests and benchmarks only.
"""

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.grad_sample import AbstractGradSampleHooks
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch.utils.data import DataLoader, TensorDataset
from transformers import PreTrainedModel, ProcessorMixin

from fedvlm.batching import encode, score
from fedvlm.data.example import VQAExample
from fedvlm.errors import ConfigError, DataError
from fedvlm.families import family_for_config
from fedvlm.training import TrainStats, take
from privacy.accounting import Release
from privacy.secure_noise import SecureRandom


def require_per_example_gradients(model: PreTrainedModel) -> None:
    """Refuse trainable image modules that do not see one image per example.

    In Idefics3/SmolVLM (image splitting) and Qwen2-VL (flattened patches) the batch dimension
    of the vision tower and of the projector is crops or patches, not examples (20 rows for 4
    examples on a tiny Idefics3): Opacus would clip per crop, and the per-example sensitivity
    the accountant assumes would not hold. So a trained projector or vision LoRA is refused.

    Raises
    ------
    ConfigError
        Naming ``train-projector`` or ``lora-vision``.
    """
    family = family_for_config(model.config)
    if family.projector_sees_examples:
        return
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    for module, key in (
        (family.projector, "train-projector"),
        (family.vision_tower, "lora-vision"),
    ):
        if any(f".{module}." in f".{name}" for name in trained):
            raise ConfigError(
                key,
                f"{family.model_type}: the {module} sees image crops or patches, not examples, "
                f"so per-example gradients of it are undefined; set {key} = false with "
                "dp-mode = sample",
            )


def poisson_sample_rate(num_examples: int, batch_size: int) -> float:
    """q as Opacus derives it from a DataLoader: 1 / number of batches per epoch."""
    return 1.0 / math.ceil(num_examples / batch_size)


@dataclass
class DPTrainStats(TrainStats):
    """`TrainStats` plus what the accountant must add for this round."""

    releases: list[Release]
    empty_batches: int


def use_secure_noise(optimizer: DPOptimizer, source: SecureRandom) -> None:
    """Make ``optimizer`` draw its Gaussian noise from ``source`` instead of torch's generator.

    Opacus' ``add_noise`` with its noise call swapped: Opacus' own secure mode needs the
    torchcsprng extension (see `privacy.secure_noise`), and its optimizer takes no noise
    source, so the bound method is replaced on this instance.
    """

    def add_noise() -> None:
        std = optimizer.noise_multiplier * optimizer.max_grad_norm
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)  # as Opacus: never noise a sum twice
            p.grad = (p.summed_grad + source.normal_like(std, p.summed_grad)).view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = add_noise


def make_private(
    model: PreTrainedModel,
    num_examples: int,
    *,
    lr: float,
    batch_size: int,
    noise_multiplier: float,
    max_grad_norm: float,
    source: SecureRandom,
    grad_sample_mode: str = "hooks",
) -> tuple[PrivacyEngine, AbstractGradSampleHooks, DPOptimizer]:
    """Opacus' engine, hooks and DP AdamW for ``model``, noised from ``source``.

    Opacus derives q and the expected batch size from a Poisson loader over the example
    indices; the batches themselves are drawn by the caller from ``source``
    (`SecureRandom.poisson_batch`). ``wrap_model=False`` leaves the `PeftModel` as it is,
    with per-sample gradient hooks on its trainable modules only. The caller must
    ``hooks.cleanup()``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    index_loader = DataLoader(TensorDataset(torch.arange(num_examples)), batch_size=batch_size)
    with warnings.catch_warnings():
        # Opacus warns that its secure RNG is off: fedvlm replaces its noise with a CSPRNG.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="prv")
    model.train()  # Opacus validates that the model is in training mode
    hooks, optimizer, _ = engine.make_private(
        module=model,
        optimizer=torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
        data_loader=index_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=grad_sample_mode,
        wrap_model=False,
    )
    use_secure_noise(optimizer, source)
    return engine, hooks, optimizer


def train_local_dp(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    examples: Sequence[VQAExample],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = "hooks",
    rng_seed: int | None = None,
) -> DPTrainStats:
    """Run ``steps`` DP-SGD (AdamW) steps with Poisson batches of expected size ``batch_size``.

    Returns the round's releases ``(noise_multiplier, sample_rate, steps)`` as Opacus'
    accountant counted them; the caller adds them to the site's persisted history.
    """
    if not examples:
        raise DataError("train_local_dp: no training examples")
    start = time.perf_counter()
    data = encode(processor, examples)
    params = [p for p in model.parameters() if p.requires_grad]
    source = SecureRandom(rng_seed)
    rate = poisson_sample_rate(len(examples), batch_size)
    engine, hooks, optimizer = make_private(
        model,
        len(examples),
        lr=lr,
        batch_size=batch_size,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        source=source,
        grad_sample_mode=grad_sample_mode,
    )
    losses: list[float] = []
    empty = 0
    try:
        for _ in range(steps):
            index = source.poisson_batch(len(examples), rate)
            optimizer.zero_grad(set_to_none=True)
            if len(index) == 0:
                empty += 1
                for p in params:
                    p.grad_sample = p.new_zeros((0, *p.shape))
            else:
                answer_loss, _ = score(model, take(data, index))
                loss = answer_loss.mean()
                loss.backward()
                losses.append(loss.item())
            optimizer.step()
    finally:
        hooks.cleanup()
        for p in params:
            p.grad = None
        model.eval()
    return DPTrainStats.from_losses(
        losses,
        steps=steps,
        examples=len(examples),
        seconds=time.perf_counter() - start,
        releases=[(float(z), float(q), int(s)) for z, q, s in engine.accountant.history],
        empty_batches=empty,
    )
