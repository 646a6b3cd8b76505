"""The coordinator's record of every site's sample-level privacy account.

Sites account their own DP-SGD (`privacy.site_account`); the coordinator keeps what they
report, for three reasons: the ledger shows ε per site every round, the checkpoint lets a
resumed run hand each site its history back (ε never restarts at zero), and the run can end
cleanly when every site has refused for lack of budget.

A reply under sample-level DP is one of: a trained update with its account, a refusal
(`dp_keys.REFUSED`), or a reply without an account, which is dropped (fail-closed: an update
not produced by DP-SGD must not enter a DP run).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import Message

from fedvlm import contract
from fedvlm.contract import dp_keys
from fedvlm.errors import ConfigError
from privacy.accounting import PrivacyHistory
from privacy.settings import SampleLevelSettings


@dataclass
class SiteReport:
    """The last account a site reported."""

    node_id: int
    epsilon: float
    projected_epsilon: float
    noise_multiplier: float
    sample_rate: float
    history: PrivacyHistory


@dataclass(frozen=True)
class Refusal:
    """A site that did not contribute this round under DP, and why (a ledger entry)."""

    node_id: int
    site: int | None
    reason: str


class SampleLevelLedger:
    """Every site's reported account, the round's refusals, and the ledger block."""

    def __init__(self, settings: SampleLevelSettings) -> None:
        self.settings = settings
        self.sites: dict[int, SiteReport] = {}

    def known_config(self) -> dict[str, list[int] | list[float]]:
        """The histories, flattened for the train ConfigRecord (see `fedvlm.contract.dp_keys`)."""
        flat: dict[str, list] = {
            dp_keys.KNOWN_SITE: [],
            dp_keys.KNOWN_NOISE: [],
            dp_keys.KNOWN_RATE: [],
            dp_keys.KNOWN_STEPS: [],
        }
        for site, report in sorted(self.sites.items()):
            for noise, rate, steps in report.history.releases:
                flat[dp_keys.KNOWN_SITE].append(site)
                flat[dp_keys.KNOWN_NOISE].append(noise)
                flat[dp_keys.KNOWN_RATE].append(rate)
                flat[dp_keys.KNOWN_STEPS].append(steps)
        return flat

    def predicted_refusals(self, node_ids: Iterable[int], local_steps: int) -> list[Refusal]:
        """The refusals every node would send, if the records show that none of them can
        train another round within budget; [] as soon as one could, or one is unknown.

        Lets the coordinator end the run without a round trip, and under secure aggregation
        (where a refusal is only an error reply) with the reasons in the ledger. The sites
        still check for themselves: this is a prediction, never a permission.
        """
        by_node = {r.node_id: (site, r) for site, r in self.sites.items()}
        refusals = []
        for node in node_ids:
            if node not in by_node or not by_node[node][1].history.releases:
                return []
            site, report = by_node[node]
            noise, rate, _ = report.history.releases[-1]
            after = report.history.epsilon(self.settings.delta, [(noise, rate, local_steps)])
            if after <= self.settings.target_epsilon:
                return []
            refusals.append(
                Refusal(
                    node,
                    site,
                    f"site {site}: another round of {local_steps} steps would bring ε to "
                    f"{after:.3f} > budget {self.settings.target_epsilon:g} "
                    f"(dp-target-epsilon) at δ = {self.settings.delta:g}",
                )
            )
        return refusals

    def split(self, replies: Iterable[Message]) -> tuple[list[Message], list[Refusal]]:
        """Record each reply's account; return the trained replies and the refusals.

        Error replies pass through untouched (the strategy counts them as dropouts).

        Raises
        ------
        ConfigError
            When a site found the settings invalid for its data (naming the key and site):
            the run must stop before anything is released.
        """
        trained: list[Message] = []
        refusals: list[Refusal] = []
        for reply in replies:
            if reply.has_error():
                trained.append(reply)
                continue
            node = reply.metadata.src_node_id
            metrics = reply.content.metric_records.get(contract.METRICS, {})
            if dp_keys.SITE not in metrics:
                refusals.append(
                    Refusal(node, None, "update without a DP-SGD account: not used in a DP run")
                )
                continue
            site = int(metrics[dp_keys.SITE])
            self._record(node, site, metrics)
            code = int(metrics.get(dp_keys.REFUSED, dp_keys.TRAINED))
            if code == dp_keys.TRAINED:
                trained.append(reply)
                continue
            refusal = reply.content.config_records.get(dp_keys.REFUSAL, {})
            reason = str(refusal.get(dp_keys.REASON, "refused"))
            if code == dp_keys.MISCONFIGURED:
                raise ConfigError(
                    str(refusal.get(dp_keys.REFUSAL_KEY, "dp-mode")) or "dp-mode",
                    f"site {site} (node {node}) cannot train privately: {reason}",
                )
            refusals.append(Refusal(node, site, reason))
        return trained, refusals

    def _record(self, node: int, site: int, metrics: Mapping[str, Any]) -> None:
        history = PrivacyHistory.from_lists(
            self.settings.accountant,
            metrics.get(dp_keys.HISTORY_NOISE, []),
            metrics.get(dp_keys.HISTORY_RATE, []),
            metrics.get(dp_keys.HISTORY_STEPS, []),
        )
        known = self.sites.get(site)
        if known is not None and known.history.steps > history.steps:
            history = known.history  # a site cannot lower what was already recorded
        self.sites[site] = SiteReport(
            node_id=node,
            epsilon=float(metrics.get(dp_keys.EPSILON, 0.0)),
            projected_epsilon=float(metrics.get(dp_keys.PROJECTED_EPSILON, 0.0)),
            noise_multiplier=float(metrics.get(dp_keys.NOISE_MULTIPLIER, 0.0)),
            sample_rate=float(metrics.get(dp_keys.SAMPLE_RATE, 0.0)),
            history=history,
        )

    def ledger_block(self, refusals: list[Refusal]) -> dict[str, Any]:
        """The round's "privacy" block: the worst site's figures on top, every site below."""
        reports = self.sites.values()
        noises = [r.noise_multiplier for r in reports if r.noise_multiplier > 0]
        return {
            "unit": "example",
            "epsilon": max((r.epsilon for r in reports), default=0.0),
            "delta": self.settings.delta,
            "budget_epsilon": self.settings.target_epsilon,
            "noise_multiplier": min(noises) if noises else None,
            "clip": self.settings.max_grad_norm,
            "sample_rate": max((r.sample_rate for r in reports), default=None),
            "steps": max((r.history.steps for r in reports), default=0),
            "accountant": self.settings.accountant,
            "projected_epsilon": max((r.projected_epsilon for r in reports), default=0.0),
            "sites": {
                str(site): {
                    "node": r.node_id,
                    "epsilon": r.epsilon,
                    "projected_epsilon": r.projected_epsilon,
                    "noise_multiplier": r.noise_multiplier,
                    "sample_rate": r.sample_rate,
                    "steps": r.history.steps,
                }
                for site, r in sorted(self.sites.items())
            },
            "refused": [vars(r) for r in refusals],
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for the checkpoint."""
        return {
            str(site): {
                "node_id": r.node_id,
                "epsilon": r.epsilon,
                "projected_epsilon": r.projected_epsilon,
                "noise_multiplier": r.noise_multiplier,
                "sample_rate": r.sample_rate,
                **r.history.to_lists(),
            }
            for site, r in self.sites.items()
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.sites = {
            int(site): SiteReport(
                node_id=int(s["node_id"]),
                epsilon=float(s["epsilon"]),
                projected_epsilon=float(s["projected_epsilon"]),
                noise_multiplier=float(s["noise_multiplier"]),
                sample_rate=float(s["sample_rate"]),
                history=PrivacyHistory.from_lists(
                    s["accountant"], s["noise"], s["rate"], s["steps"]
                ),
            )
            for site, s in state.items()
        }
