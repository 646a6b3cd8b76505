"""The expected signal-to-noise of a DP-SGD step: a warning before a run that cannot learn.

One DP-SGD step adds N(0, (zC)^2) to every one of the d trained coordinates of a sum of about
B per-example gradients, each clipped to norm C (B: the expected Poisson batch). That sum has
norm at most B*C, reached only if every gradient is aligned and at the clip; the noise has
norm about zC*sqrt(d). So

    SNR = B / (z * sqrt(d))

bounds a step's signal-to-noise from above, whatever C. Measured on the embedded model's
task, the clipped per-example gradients average to about 0.15 C (they are far from aligned),
so the step's real signal-to-noise is several times below this bound. At the shipped
defaults (batch 8, 77 k trained parameters, ε = 8 over 80 steps) the bound is about 0.04 and
DP-SGD did not learn; `simulations/scenarios/dp.toml` (2000 examples per site, batch 256,
FFA-LoRA rank 2 without projector) has about 3.8 and matched its non-DP twin in-process
(0.633 both), while batch 64 (1.35) reached 0.346 against 0.646.
"""

import math

#: Below this bound, a run is warned at start-up that DP-SGD is unlikely to learn.
MIN_SNR = 2.0


def expected_snr(expected_batch: float, noise_multiplier: float, trained_params: int) -> float:
    """The upper bound B / (z sqrt(d)) of the module docstring (infinite without noise)."""
    if noise_multiplier <= 0:
        return math.inf
    return expected_batch / (noise_multiplier * math.sqrt(trained_params))


def low_snr_warning(
    expected_batch: float, noise_multiplier: float, trained_params: int
) -> str | None:
    """The start-up warning when the bound is below `MIN_SNR`, with its figure; else None."""
    snr = expected_snr(expected_batch, noise_multiplier, trained_params)
    if snr >= MIN_SNR:
        return None
    return (
        f"DP-SGD is unlikely to learn: a step's signal-to-noise is at most {snr:.3g} (expected "
        f"batch {expected_batch:g} / (noise multiplier {noise_multiplier:.3g} x sqrt of "
        f"{trained_params} trained parameters)), below {MIN_SNR:g}. Raise batch-size and the "
        'examples per site, or train fewer parameters (strategy = "ffa-lora", a small '
        "lora-rank, train-projector = false); see simulations/scenarios/dp.toml"
    )
