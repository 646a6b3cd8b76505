"""Independent privacy accounting for the DP tests: Google's dp-accounting, not Opacus.

What fedvlm reports is computed with Opacus' accountants; checking it against the same code
that produced it would prove nothing, so the tests compare with these.
"""

import dp_accounting
from dp_accounting import pld


def gaussian_rounds_epsilon(noise: float, rounds: int, delta: float) -> float:
    """ε of ``rounds`` Gaussian releases without sampling (q = 1), by the PLD accountant."""
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise), rounds)
    return pld.PLDAccountant().compose(event).get_epsilon(delta)


def poisson_gaussian_epsilon(noise: float, rate: float, steps: int, delta: float) -> float:
    """ε of ``steps`` Poisson-subsampled Gaussian releases (DP-SGD), by the PLD accountant."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps
    )
    return pld.PLDAccountant().compose(event).get_epsilon(delta)
