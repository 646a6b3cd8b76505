"""Client-level DP: each site's whole update is the protected unit.

Two halves, on two machines:

- at the site, `clip_update` bounds the L2 norm of the whole adapter update by C, *before*
  any secure-aggregation masking, so the sum the coordinator learns changes by at most C when
  one site is added or removed;
- at the coordinator, `ClientLevelDP.add_noise` adds N(0, (z*C)^2) to every coordinate of the
  SUM of those clipped updates, each with weight 1, once per round, after checking that this
  release keeps the run within its ε budget. The strategy then divides by the number of sites
  (`apply_update_sum(round, noisy_sum, total_weight=num_sites)`), so the mean carries noise of
  std z*C/m.

Why weight 1: with example-count weights w_i the sensitivity of the weighted sum is
C * max_i w_i, not C, and noise calibrated to C would silently under-protect the largest site.
Uniform weights keep the sensitivity exactly C.
"""

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedvlm.errors import FedVLMError
from privacy.accounting import BudgetExhaustedError, PrivacyHistory, calibrate_noise
from privacy.secure_noise import SecureRandom
from privacy.settings import ClientLevelSettings, check_delta

#: q of every client-level release: sites are not Poisson-sampled with secret randomness
#: (Flower draws a fixed-size set and the ledger names the participants), so no amplification.
SAMPLE_RATE = 1.0


def update_norm(update: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of a whole update (all tensors together), accumulated in float64."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values()))


def clip_update(
    update: Mapping[str, torch.Tensor], clip: float
) -> tuple[dict[str, torch.Tensor], float]:
    """Scale ``update`` down to L2 norm ``clip`` if larger; return the copy and the original norm.

    The direction is kept; an update already within the bound is copied unchanged. Runs at the
    site, before masking, so the coordinator never needs to see an individual update.
    """
    norm = update_norm(update)
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return {name: (t * factor).to(t.dtype) for name, t in update.items()}, norm


class ClientLevelDP:
    """The coordinator's Gaussian mechanism on the sum of clipped site updates, and its budget.

    Parameters
    ----------
    settings : ClientLevelSettings
        Clip C, budget (ε, δ), noise multiplier (None: calibrated at the first round) and
        accountant.
    planned_rounds : int
        Rounds the run plans (``num-server-rounds``), for calibration and the projected ε.
    rng : SecureRandom or numpy.random.Generator, optional
        Noise source (anything with numpy's ``normal(loc, scale, size)``); by default a
        CSPRNG keyed from the OS's entropy (`privacy.secure_noise`), so no one can predict
        it from the releases. Tests pass a seeded numpy one to replay the noise.
    """

    def __init__(
        self,
        settings: ClientLevelSettings,
        planned_rounds: int,
        rng: SecureRandom | np.random.Generator | None = None,
    ) -> None:
        self.settings = settings
        self.planned_rounds = planned_rounds
        self.noise_multiplier = settings.noise_multiplier
        self.history = PrivacyHistory(settings.accountant)
        self.rng = rng or SecureRandom()

    @property
    def std(self) -> float:
        """Noise std on each coordinate of the sum: z * C."""
        if self.noise_multiplier is None:
            raise FedVLMError("client-level DP: noise multiplier not calibrated yet")
        return self.noise_multiplier * self.settings.clip

    def prepare_round(self, num_sites: int) -> None:
        """Check this round's release fits the budget, before any site trains.

        Accounted at q = 1 (no amplification by sampling): Flower samples a fixed-size set
        of sites with non-secret randomness and the ledger publishes who trained, so a site
        known to be in a round gains no protection from the others not being in it. On the
        first call, δ < 1/(number of sites) is checked and, without a fixed noise multiplier,
        z is calibrated so that ``planned_rounds`` releases spend exactly the budget.

        Raises
        ------
        ConfigError
            δ too large for this many sites, or a budget no noise can meet.
        BudgetExhaustedError
            When this round's release would pass the ε budget (the run must end).
        """
        if self.noise_multiplier is None:
            check_delta("dp-client-delta", self.settings.delta, num_sites, "sites")
            self.noise_multiplier = calibrate_noise(
                "dp-client-target-epsilon",
                target_epsilon=self.settings.target_epsilon,
                delta=self.settings.delta,
                sample_rate=SAMPLE_RATE,
                steps=self.planned_rounds,
                accountant=self.settings.accountant,
            )
        elif not self.history.releases:
            check_delta("dp-client-delta", self.settings.delta, num_sites, "sites")
        after = self.history.epsilon(self.settings.delta, [(self.noise_multiplier, SAMPLE_RATE, 1)])
        if after > self.settings.target_epsilon:
            raise BudgetExhaustedError(
                f"client-level privacy budget spent: ε would reach {after:.3f} > "
                f"{self.settings.target_epsilon:g} (dp-client-target-epsilon) at δ = "
                f"{self.settings.delta:g} after {self.history.steps} rounds released"
            )

    def add_noise(
        self, update_sum: Mapping[str, np.ndarray], num_sites: int
    ) -> dict[str, np.ndarray]:
        """Return ``update_sum`` + N(0, (z*C)^2) per coordinate, and account the release.

        Parameters
        ----------
        update_sum : mapping of str to numpy.ndarray
            The sum of the sites' clipped updates, each with weight 1.
        num_sites : int
            How many updates are in the sum (the strategy divides by it).
        """
        if num_sites < 1:
            raise FedVLMError("client-level DP: no update to release")
        std = self.std
        noisy = {
            name: np.asarray(total, dtype=np.float64)
            + self.rng.normal(0.0, std, size=np.shape(total))
            for name, total in update_sum.items()
        }
        self.history.add(self.noise_multiplier, SAMPLE_RATE, 1)
        return noisy

    def epsilon(self) -> float:
        """ε spent so far at the configured δ."""
        return self.history.epsilon(self.settings.delta)

    def projected_epsilon(self) -> float:
        """ε at the end of the planned rounds if every remaining round releases."""
        remaining = max(self.planned_rounds - self.history.steps, 0)
        return self.history.epsilon(
            self.settings.delta, [(self.noise_multiplier or 0.0, SAMPLE_RATE, remaining)]
        )

    def ledger_block(self) -> dict[str, Any]:
        """The round's "privacy" block for the ledger (unit "site", accounted at q = 1)."""
        return {
            "unit": "site",
            "epsilon": self.epsilon(),
            "delta": self.settings.delta,
            "budget_epsilon": self.settings.target_epsilon,
            "noise_multiplier": self.noise_multiplier,
            "clip": self.settings.clip,
            "noise_std_on_sum": self.std,
            "sample_rate": SAMPLE_RATE,
            "steps": self.history.steps,
            "accountant": self.settings.accountant,
            "projected_epsilon": self.projected_epsilon(),
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for the coordinator's checkpoint (ε never restarts at zero)."""
        return {"noise_multiplier": self.noise_multiplier, **self.history.to_lists()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.noise_multiplier = state["noise_multiplier"]
        self.history = PrivacyHistory.from_lists(
            state["accountant"], state["noise"], state["rate"], state["steps"]
        )
