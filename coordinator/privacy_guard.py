"""The coordinator's differential-privacy duties in each round, in one place.

- At start-up: warn when DP-SGD's expected signal-to-noise makes learning unlikely
  (`privacy.signal`); refuse combinations that would silently weaken the guarantee (a strategy that
  needs individual updates under client-level DP; FedProx's proximal term, which per-example
  clipping would not bound, under sample-level DP).
- Before a round: hand each site the account the coordinator recorded for it (sample level),
  or check that this round's release fits the budget (client level); an exhausted budget
  raises `BudgetExhaustedError` before any site trains, and the run ends cleanly.
- Aggregation (plain path): under sample-level DP, refusals are set aside and recorded; under
  client-level DP each validated, clipped update weighs 1, their sum gets N(0, (zC)^2) noise
  once, and the strategy applies ``sum / m`` (`apply_update_sum`).
- Recording: the round's "privacy" ledger block, and the state the checkpoint keeps so a
  resumed run continues its accounts instead of restarting at ε = 0.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedvlm.adapter import Adapter
from fedvlm.config import RunSettings
from fedvlm.contract import dp_keys
from fedvlm.errors import ConfigError
from fedvlm.lora_factors import exchanged_keys
from privacy.accounting import BudgetExhaustedError, calibrate_noise
from privacy.client_level import ClientLevelDP
from privacy.dp_sgd import poisson_sample_rate
from privacy.sample_ledger import Refusal, SampleLevelLedger
from privacy.settings import PrivacySettings
from privacy.signal import low_snr_warning
from strategies import AdapterStrategy, require_linear

# Float32 rounding of a clipped update's norm, relative to the clip.
_CLIP_SLACK = 1e-5


class PrivacyGuard:
    """What differential privacy adds to the coordinator's round loop (inactive for "none").

    Parameters
    ----------
    settings : PrivacySettings
        The parsed ``dp-*`` keys.
    run : RunSettings
        The run (planned rounds, sampling).
    strategy : AdapterStrategy
        Checked against the DP mode at construction.
    federation : str
        The run's federation id, sent to the sites so that their account files
        (`privacy.account_store`) carry over a resume.

    Raises
    ------
    ConfigError
        When the strategy cannot run under the chosen DP mode (naming ``strategy``).
    """

    def __init__(
        self,
        settings: PrivacySettings,
        run: RunSettings,
        strategy: AdapterStrategy,
        federation: str = "",
    ):
        self.settings = settings
        self.federation = federation
        self.run = run
        self.strategy = strategy
        self.sample = SampleLevelLedger(settings.sample) if settings.sample else None
        self.client = ClientLevelDP(settings.client, run.num_rounds) if settings.client else None
        self.refusals: list[Refusal] = []
        if self.client is not None:
            require_linear(strategy, "client-level DP (dp-mode = client) only noises their sum")
        if self.sample is not None and run.strategy.strip().lower() == "fedprox":
            raise ConfigError(
                "strategy",
                "fedprox adds a proximal term whose gradient DP-SGD's per-example clipping "
                "does not bound; use fedavg/fedadam/fedyogi with dp-mode = sample",
            )

    @property
    def active(self) -> bool:
        """Whether the run uses differential privacy at all."""
        return self.sample is not None or self.client is not None

    def train_config(self, base: ConfigRecord) -> ConfigRecord:
        """The round's train config, with the sites' recorded accounts (sample level)."""
        if self.sample is None:
            return base
        return ConfigRecord(
            {**base, **self.sample.known_config(), dp_keys.FEDERATION: self.federation}
        )

    def snr_warning(self, adapter: Adapter) -> str | None:
        """Sample level: the start-up warning of `privacy.signal` when DP-SGD at these
        settings is unlikely to learn, or None.

        Trained parameters are the adapter's (its B factors only under FFA-LoRA); the noise
        multiplier is the fixed one, or the one a site of ``sim-examples-per-site`` examples
        would calibrate (synthetic simulation); with neither known, no warning.
        """
        if self.sample is None:
            return None
        settings, run = self.sample.settings, self.run
        ffa = run.strategy.strip().lower() == "ffa-lora"
        names = exchanged_keys(adapter) if ffa else list(adapter)
        trained = sum(adapter[name].numel() for name in names)
        noise = settings.noise_multiplier
        if noise is None:
            if not run.simulation.synthetic:
                return None
            noise = calibrate_noise(
                "dp-target-epsilon",
                target_epsilon=settings.target_epsilon,
                delta=settings.delta,
                sample_rate=poisson_sample_rate(run.simulation.examples_per_site, run.batch_size),
                steps=run.num_rounds * run.local_steps,
                accountant=settings.accountant,
            )
        return low_snr_warning(run.batch_size, noise, trained)

    def before_round(self, grid: Grid) -> None:
        """Check, before any site trains, that this round can fit the budget.

        Sample level: when the recorded accounts show that no connected site can train
        another round, the run ends here (the sites would refuse anyway). Client level:
        the release of this round must fit ``dp-client-target-epsilon``.

        Client level: accounted at q = 1 (`privacy.client_level.SAMPLE_RATE`), whatever
        ``fraction-train``: Flower's choice of sites is neither Poisson nor secret.

        Raises
        ------
        BudgetExhaustedError
            When no site can train (sample level) or the release would pass
            ``dp-client-target-epsilon`` (client level).
        """
        self.refusals = []
        nodes = list(grid.get_node_ids())
        if self.sample is not None:
            self.refusals = self.sample.predicted_refusals(nodes, self.run.local_steps)
            if self.refusals:
                raise BudgetExhaustedError(
                    "no site can train within its privacy budget: "
                    + "; ".join(r.reason for r in self.refusals)
                )
        if self.client is None:
            return
        self.client.prepare_round(len(nodes))

    def aggregate(
        self, server_round: int, replies: Sequence[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The plain path's aggregation under DP (the strategy's own without DP).

        Raises
        ------
        BudgetExhaustedError
            Sample level, when every site that answered refused for lack of budget.
        """
        if self.sample is not None:
            return self.strategy.aggregate_train(server_round, self.observe(replies))
        if self.client is not None:
            return self._aggregate_client_level(server_round, replies)
        return self.strategy.aggregate_train(server_round, replies)

    def observe(self, replies: Sequence[Message]) -> list[Message]:
        """Sample level: record the sites' accounts and this round's refusals; return the
        replies that may be aggregated (trained updates, and error replies as dropouts).

        Used by `aggregate` on the plain path and handed to the secure path as its
        ``record_replies`` hook, where the refusals arrive at the masked-input stage.

        Raises
        ------
        BudgetExhaustedError
            When every site that answered refused for lack of budget.
        ConfigError
            When a site found the settings invalid for its data (`SampleLevelLedger.split`).
        """
        if self.sample is None:
            return list(replies)
        trained, self.refusals = self.sample.split(replies)
        if self.refusals and not any(not m.has_error() for m in trained):
            raise BudgetExhaustedError(
                "no site can train within its privacy budget: "
                + "; ".join(r.reason for r in self.refusals)
            )
        return trained

    def add_noise(self, update_sum: dict[str, np.ndarray], num_sites: int) -> dict[str, np.ndarray]:
        """Client level: noise the sum of ``num_sites`` unit-weight clipped updates."""
        if self.client is None:
            raise ConfigError("dp-mode", "add_noise needs dp-mode = client")
        return self.client.add_noise(update_sum, num_sites)

    def _aggregate_client_level(
        self, server_round: int, replies: Sequence[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        bound = self.settings.client.clip * (1 + _CLIP_SLACK)
        accepted = self.strategy.accept_replies(replies, max_norm=bound)
        return self.strategy.aggregate_sum(server_round, accepted, self.add_noise)

    def ledger_block(self) -> dict[str, Any] | None:
        """The round's "privacy" block (None without DP)."""
        if self.sample is not None:
            return self.sample.ledger_block(self.refusals)
        if self.client is not None and self.client.noise_multiplier is not None:
            return self.client.ledger_block()
        return None

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint extras: the accounts, so a resumed run never restarts at ε = 0."""
        state: dict[str, Any] = {}
        if self.sample is not None:
            state["dp-sample"] = self.sample.state_dict()
        if self.client is not None:
            state["dp-client"] = self.client.state_dict()
        return state

    def load_state_dict(self, extra: dict[str, Any]) -> None:
        """Restore the accounts from a checkpoint's extras."""
        if self.sample is not None and "dp-sample" in extra:
            self.sample.load_state_dict(extra["dp-sample"])
        if self.client is not None and "dp-client" in extra:
            self.client.load_state_dict(extra["dp-client"])
