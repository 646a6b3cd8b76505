"""Privacy accounting as plain data: a history of Gaussian releases and its ε.

Opacus' accountants keep their state as a ``history`` list of ``(noise_multiplier,
sample_rate, steps)``; that list is all that is needed to recompute ε, so it is what fedvlm
persists (in a site's account file, in the coordinator's checkpoint, in the ledger). An
accountant object is rebuilt from it whenever ε is needed, so no state can silently restart at
zero because an object did not survive a process.
"""

import functools
import warnings
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from opacus.accountants import create_accountant

from fedvlm.errors import ConfigError, FedVLMError

Release = tuple[float, float, int]  # (noise multiplier, sample rate, steps)

#: Below this noise multiplier the PRV accountant is replaced by RDP (see `epsilon`).
PRV_MIN_NOISE = 0.5
_MAX_NOISE = 1e4


class BudgetExhaustedError(FedVLMError):
    """The next release would take a protected unit past its ε budget; nothing was released."""


@contextmanager
def _quiet():
    """Silence the accountants' harmless noise: PRV's log(1 - q) at q = 1 (no subsampling)
    and RDP's hint that larger orders might tighten a bound that is already valid."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


@dataclass
class PrivacyHistory:
    """Every subsampled-Gaussian release of one protected unit, compressed by (z, q).

    Attributes
    ----------
    accountant : str
        "prv" or "rdp" (Opacus' mechanism names).
    releases : list of (noise multiplier, sample rate, steps)
        Consecutive steps with the same z and q share one entry, as in Opacus.
    """

    accountant: str
    releases: list[Release] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Steps accounted so far."""
        return sum(steps for _, _, steps in self.releases)

    def add(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Account ``steps`` more releases at (z, q)."""
        if steps <= 0:
            return
        if self.releases and self.releases[-1][:2] == (noise_multiplier, sample_rate):
            z, q, done = self.releases[-1]
            self.releases[-1] = (z, q, done + steps)
        else:
            self.releases.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self, delta: float, extra: Iterable[Release] = ()) -> float:
        """ε at ``delta`` after the accounted releases (plus ``extra`` ones, not recorded).

        Returns 0.0 for an empty history and infinity when any release had no noise.
        """
        releases = [r for r in [*self.releases, *extra] if r[2] > 0]
        if not releases:
            return 0.0
        if any(z <= 0 for z, _, _ in releases):
            return float("inf")
        # PRV's discretisation needs huge grids at small noise (memory errors, inf seen at
        # z = 0.1); RDP is then used instead. Both are upper bounds on the true ε.
        smallest = min(z for z, _, _ in releases)
        mechanism = "rdp" if self.accountant == "prv" and smallest < PRV_MIN_NOISE else None
        return _epsilon(mechanism or self.accountant, _merged(releases), delta)

    def to_lists(self) -> dict[str, list[float] | list[int] | str]:
        """Flat lists for a Flower ConfigRecord or a JSON ledger."""
        return {
            "accountant": self.accountant,
            "noise": [z for z, _, _ in self.releases],
            "rate": [q for _, q, _ in self.releases],
            "steps": [s for _, _, s in self.releases],
        }

    @classmethod
    def from_lists(
        cls, accountant: str, noise: Sequence[float], rate: Sequence[float], steps: Sequence[int]
    ) -> "PrivacyHistory":
        """Inverse of `to_lists`."""
        return cls(
            accountant,
            [(float(z), float(q), int(s)) for z, q, s in zip(noise, rate, steps, strict=True)],
        )


def _merged(releases: Iterable[Release]) -> tuple[Release, ...]:
    """Consecutive releases with the same (z, q) as one entry (what `add` keeps)."""
    history = PrivacyHistory("")
    for noise, rate, steps in releases:
        history.add(noise, rate, steps)
    return tuple(history.releases)


@functools.lru_cache(maxsize=256)
def _epsilon(mechanism: str, releases: tuple[Release, ...], delta: float) -> float:
    """ε of a history; cached because a site asks for the same one several times a round
    (budget check, report, projection) and PRV costs up to a second on a CPU."""
    accountant = create_accountant(mechanism=mechanism)
    accountant.history = list(releases)
    with _quiet():
        return float(accountant.get_epsilon(delta=delta))


def calibrate_noise(
    key: str,
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
) -> float:
    """The smallest noise multiplier (to 0.5%) with which ``steps`` releases stay within
    the budget; bisection over `PrivacyHistory.epsilon`, so it shares its PRV safeguard.

    Raises
    ------
    ConfigError
        Naming ``key`` (the ε budget) when no reasonable noise reaches it.
    """

    def spent(noise: float) -> float:
        return PrivacyHistory(accountant, [(noise, sample_rate, steps)]).epsilon(delta)

    low, high = 0.0, 1.0
    while spent(high) > target_epsilon:
        low, high = high, 2 * high
        if high > _MAX_NOISE:
            raise ConfigError(
                key,
                f"ε = {target_epsilon:g} at δ = {delta:g} cannot be reached in {steps} steps "
                f"at sampling rate {sample_rate:.3g} with a noise multiplier below {_MAX_NOISE:g}",
            )
    while high - low > 0.005 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) > target_epsilon else (low, middle)
    return high
