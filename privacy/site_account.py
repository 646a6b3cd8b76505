"""A site's sample-level privacy account: persisted on the site, checked before training, reported.

The accountant's history lives in a node-local file (`privacy.account_store`), outside any
one Flower run, written before an update leaves the site; it is also reported to the
coordinator, which records it in its ledger and checkpoint and sends it back each round. A
site starts a round from whichever of the two has accounted more steps: its own file cannot
be rolled back by the coordinator, and a site whose file was lost (a new machine) continues
from the coordinator's record instead of from ε = 0.

Before training, `SiteAccount.plan_round` checks that this round's steps keep the site within its
ε budget; if not, the site refuses and trains nothing.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedvlm import contract
from fedvlm.contract import dp_keys
from fedvlm.errors import ConfigError, FedVLMError
from privacy.account_store import AccountStore
from privacy.accounting import BudgetExhaustedError, PrivacyHistory, calibrate_noise
from privacy.dp_sgd import poisson_sample_rate
from privacy.settings import SampleLevelSettings, check_delta


def site_key(node_config: Mapping[str, Any], node_id: int) -> int:
    """A key that names the same site across runs: its partition id in simulation (node ids
    are drawn anew per run there), else its node id (stable for an authenticated node)."""
    partition = node_config.get("partition-id")
    return int(partition) if partition is not None else int(node_id)


def known_history(config: Mapping[str, Any], site: int, accountant: str) -> PrivacyHistory:
    """This site's releases as the coordinator recorded them (from the train ConfigRecord)."""
    entries = zip(
        config.get(dp_keys.KNOWN_SITE, []),
        config.get(dp_keys.KNOWN_NOISE, []),
        config.get(dp_keys.KNOWN_RATE, []),
        config.get(dp_keys.KNOWN_STEPS, []),
        strict=True,
    )
    history = PrivacyHistory(accountant)
    for owner, noise, rate, steps in entries:
        if int(owner) == site:
            history.add(float(noise), float(rate), int(steps))
    return history


class SiteRefusalError(FedVLMError):
    """The site will not train this round; carries the reason and the account's scalars.

    ``code`` is `dp_keys.OVER_BUDGET` (the budget would be exceeded: the coordinator goes on
    with the other sites) or `dp_keys.MISCONFIGURED` (``cause`` is a ConfigError naming the key:
    the coordinator stops the run).
    """

    def __init__(self, code: int, cause: FedVLMError, metrics: Mapping[str, Any]) -> None:
        self.code = code
        self.cause = cause
        self.metrics = dict(metrics)
        super().__init__(str(cause))


@dataclass
class RoundPlan:
    """What this round will spend, decided before training."""

    noise_multiplier: float
    sample_rate: float
    steps: int


class SiteAccount:
    """One site's sample-level DP account for the run.

    Parameters
    ----------
    settings : SampleLevelSettings
        Budget, δ, clip, noise (or None to calibrate) and accountant.
    history : PrivacyHistory
        Releases accounted so far (see `open`).
    site : int
        The site's key (`site_key`).
    message : str
        The id of the message this round answers ("" when unknown): a retry of the same
        message starts again from the history before it (`AccountStore.load`).
    """

    def __init__(
        self,
        settings: SampleLevelSettings,
        history: PrivacyHistory,
        site: int,
        message: str = "",
    ) -> None:
        self.settings = settings
        self.history = history
        self.before = PrivacyHistory(history.accountant, list(history.releases))
        self.site = site
        self.message = message
        self.plan: RoundPlan | None = None

    @classmethod
    def open(
        cls,
        settings: SampleLevelSettings,
        store: AccountStore,
        train_config: Mapping[str, Any],
        site: int,
        message: str = "",
    ) -> "SiteAccount":
        """The account from the site's file or the coordinator's record, whichever is longer.

        ``message`` is the id of the message being answered (see the class).
        """
        own = store.load(settings.accountant, message)
        known = known_history(train_config, site, settings.accountant)
        return cls(settings, known if known.steps > own.steps else own, site, message)

    def save(self, store: AccountStore) -> None:
        """Write the history to the site's file (call before the update is released)."""
        store.save(self.history, self.message, self.before)

    def begin_round(
        self, *, num_examples: int, batch_size: int, local_steps: int, planned_rounds: int
    ) -> RoundPlan:
        """`plan_round`, with a refusal turned into a `SiteRefusalError` that carries the metrics.

        Raises
        ------
        SiteRefusalError
            When the site must not train this round.
        """
        try:
            return self.plan_round(
                num_examples=num_examples,
                batch_size=batch_size,
                local_steps=local_steps,
                planned_rounds=planned_rounds,
            )
        except ConfigError as err:
            metrics = {contract.NUM_EXAMPLES: num_examples, **self.metrics(0)}
            raise SiteRefusalError(dp_keys.MISCONFIGURED, err, metrics) from err
        except BudgetExhaustedError as err:
            metrics = {
                contract.NUM_EXAMPLES: num_examples,
                **self.metrics(planned_rounds * local_steps),
            }
            raise SiteRefusalError(dp_keys.OVER_BUDGET, err, metrics) from err

    def plan_round(
        self, *, num_examples: int, batch_size: int, local_steps: int, planned_rounds: int
    ) -> RoundPlan:
        """Decide this round's (z, q, steps) and check the budget, before any training.

        The noise multiplier is chosen once per run: the configured one, or the one calibrated
        so that ``planned_rounds * local_steps`` steps at this site's q spend the budget; later
        rounds reuse the last one in the history.

        Raises
        ------
        ConfigError
            δ ≥ 1/n for this site, or a budget no noise can meet.
        BudgetExhaustedError
            When this round would take the site past its ε budget.
        """
        check_delta("dp-delta", self.settings.delta, num_examples, "training examples at this site")
        rate = poisson_sample_rate(num_examples, batch_size)
        if self.history.releases:
            noise = self.history.releases[-1][0]
        elif self.settings.noise_multiplier is not None:
            noise = self.settings.noise_multiplier
        else:
            noise = calibrate_noise(
                "dp-target-epsilon",
                target_epsilon=self.settings.target_epsilon,
                delta=self.settings.delta,
                sample_rate=rate,
                steps=planned_rounds * local_steps,
                accountant=self.settings.accountant,
            )
        after = self.history.epsilon(self.settings.delta, [(noise, rate, local_steps)])
        self.plan = RoundPlan(noise, rate, local_steps)
        if after > self.settings.target_epsilon:
            raise BudgetExhaustedError(
                f"site {self.site}: this round's {local_steps} steps would bring ε to "
                f"{after:.3f} > budget {self.settings.target_epsilon:g} (dp-target-epsilon) at "
                f"δ = {self.settings.delta:g}; ε spent so far {self.epsilon():.3f} in "
                f"{self.history.steps} steps. Refusing to train."
            )
        return self.plan

    def record(self, releases: list[tuple[float, float, int]]) -> None:
        """Account the releases Opacus counted in this round."""
        for noise, rate, steps in releases:
            self.history.add(noise, rate, steps)

    def epsilon(self) -> float:
        """ε spent so far at the configured δ."""
        return self.history.epsilon(self.settings.delta)

    def metrics(self, planned_steps: int) -> dict[str, float | int | list[float] | list[int]]:
        """Scalars for the train reply: ε, δ, z, q, steps, projection and the full history."""
        lists = self.history.to_lists()
        plan = self.plan
        projected = (
            self.history.epsilon(
                self.settings.delta,
                [
                    (
                        plan.noise_multiplier,
                        plan.sample_rate,
                        max(planned_steps - self.history.steps, 0),
                    )
                ],
            )
            if plan is not None
            else self.epsilon()
        )
        return {
            dp_keys.SITE: self.site,
            dp_keys.EPSILON: self.epsilon(),
            dp_keys.DELTA: self.settings.delta,
            dp_keys.NOISE_MULTIPLIER: plan.noise_multiplier if plan else 0.0,
            dp_keys.SAMPLE_RATE: plan.sample_rate if plan else 0.0,
            dp_keys.STEPS: self.history.steps,
            dp_keys.PROJECTED_EPSILON: projected,
            dp_keys.HISTORY_NOISE: lists["noise"],
            dp_keys.HISTORY_RATE: lists["rate"],
            dp_keys.HISTORY_STEPS: lists["steps"],
        }


def refusal_reply(msg: Message, refusal: SiteRefusalError, energy: Mapping[str, Any]) -> Message:
    """A train reply that says the site did not train, and why (no ArrayRecord).

    ``energy`` is the site's energy reading of the attempt (`fedvlm.energy.reading_to_metrics`):
    the coordinator records every reply's energy, and a refusal among trained replies must not
    be the one reply that lacks it (the round would be lost).
    """
    key = refusal.cause.key if isinstance(refusal.cause, ConfigError) else ""
    content = RecordDict(
        {
            contract.METRICS: MetricRecord(
                {dp_keys.REFUSED: refusal.code, **refusal.metrics, **energy}
            ),
            dp_keys.REFUSAL: ConfigRecord(
                {dp_keys.REASON: str(refusal.cause), dp_keys.REFUSAL_KEY: key}
            ),
        }
    )
    return Message(content=content, reply_to=msg)
