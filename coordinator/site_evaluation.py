"""The round's federated evaluation as a ledger block: per site, weighted mean, worst, gap.

Flower's aggregated evaluate MetricRecord is one example-weighted average; a hospital asks
whether the adapter works *for it*. So every site's own figures are kept, read from each
reply's MetricRecord (``fedvlm.site_metrics``), with the example-weighted mean, the worst site
and the spread between best and worst site (the fairness gap across sites), the per-type
accuracy pooled over sites, and the subgroup counts with accuracies only where a site
reported them (suppressed groups stay suppressed: their examples are counted, never scored).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Message

from fedvlm import contract
from fedvlm.site_metrics import SiteEvaluation


def _weighted(pairs: Iterable[tuple[int, float]]) -> float | None:
    """Example-weighted mean of (count, value) pairs; None when nothing was counted."""
    pairs = list(pairs)
    total = sum(n for n, _ in pairs)
    return math.fsum(n * v for n, v in pairs) / total if total else None


def site_names(replies: Iterable[Message]) -> dict[str, str]:
    """Node id -> the name each replying site sent (its node id when it sent none)."""
    names = {}
    for message in replies:
        node = str(message.metadata.src_node_id)
        record = None if message.has_error() else message.content.config_records.get(contract.SITE)
        names[node] = str(record[contract.SITE_NAME]) if record else node
    return dict(sorted(names.items()))


def site_evaluations(replies: Iterable[Message]) -> tuple[dict[str, SiteEvaluation], list[str]]:
    """Each replying node's parsed evaluation, and the nodes whose reply was an error."""
    sites, failed = {}, []
    for message in replies:
        node = str(message.metadata.src_node_id)
        if message.has_error() or contract.METRICS not in message.content:
            failed.append(node)
            continue
        sites[node] = SiteEvaluation.from_metrics(message.content[contract.METRICS])
    return dict(sorted(sites.items())), sorted(failed)


def _pooled_subgroups(sites: Mapping[str, SiteEvaluation]) -> dict[str, dict[str, Any]]:
    """Per field and value: all examples, suppressed ones, accuracy over the reported ones."""
    pooled: dict[str, dict[str, Any]] = {}
    for site in sites.values():
        for name, values in site.subgroups.items():
            for value, (n, accuracy) in values.items():
                entry = pooled.setdefault(name, {}).setdefault(
                    value, {"n": 0, "n_suppressed": 0, "_pairs": []}
                )
                entry["n"] += n
                if accuracy is None:
                    entry["n_suppressed"] += n
                else:
                    entry["_pairs"].append((n, accuracy))
    for values in pooled.values():
        for entry in values.values():
            entry["accuracy"] = _weighted(entry.pop("_pairs"))
    return {k: dict(sorted(v.items())) for k, v in sorted(pooled.items())}


def evaluation_block(
    sites: Mapping[str, SiteEvaluation],
    failed: list[str],
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ledger's ``site_eval`` block of one round (JSON-ready), keyed by node id.

    Each site, and the worst and best, also carry the ``name`` the site sent (``names``).
    """
    names = names or {}
    per_site = {
        node: {
            "name": names.get(node, node),
            "examples": s.examples,
            "accuracy": s.accuracy,
            "loss": s.loss,
            "by_type": {t: {"n": n, "accuracy": a} for t, (n, a) in s.by_type.items()},
            "subgroups": {
                name: {v: {"n": n, "accuracy": a} for v, (n, a) in values.items()}
                for name, values in s.subgroups.items()
            },
            **(
                {"personalised_accuracy": s.personalised_accuracy}
                if s.personalised_accuracy is not None
                else {}
            ),
            **(
                {"test": {"n": s.test_examples, "accuracy": s.test_accuracy, "loss": s.test_loss}}
                if s.test_accuracy is not None
                else {}
            ),
        }
        for node, s in sites.items()
    }
    block: dict[str, Any] = {"sites": per_site, "failed": failed}
    if not sites:
        return block
    worst = min(sites, key=lambda node: (sites[node].accuracy, node))
    best = max(sites, key=lambda node: (sites[node].accuracy, node))
    types = sorted({t for s in sites.values() for t in s.by_type})
    block.update(
        {
            "weighted_accuracy": _weighted((s.examples, s.accuracy) for s in sites.values()),
            "weighted_loss": _weighted((s.examples, s.loss) for s in sites.values()),
            "worst_site": {
                "node": worst,
                "name": names.get(worst, worst),
                "accuracy": sites[worst].accuracy,
            },
            "best_site": {
                "node": best,
                "name": names.get(best, best),
                "accuracy": sites[best].accuracy,
            },
            "fairness_gap": sites[best].accuracy - sites[worst].accuracy,
            "by_type": {
                t: {
                    "n": sum(s.by_type[t][0] for s in sites.values() if t in s.by_type),
                    "accuracy": _weighted(s.by_type[t] for s in sites.values() if t in s.by_type),
                }
                for t in types
            },
            "subgroups": _pooled_subgroups(sites),
        }
    )
    tested = [(s.test_examples, s.test_accuracy) for s in sites.values() if s.test_examples]
    if tested:  # only the sites that hold a test split; never mixed into validation
        block["test"] = {
            "n": sum(n for n, _ in tested),
            "sites": len(tested),
            "weighted_accuracy": _weighted(tested),
        }
    tuned = [(s.examples, s.personalised_accuracy) for s in sites.values()]
    if all(a is not None for _, a in tuned):
        block["personalised_weighted_accuracy"] = _weighted(tuned)
    return block


def round_block(replies: Iterable[Message]) -> dict[str, Any]:
    """Parse a round's evaluate replies into its ``site_eval`` ledger block."""
    replies = list(replies)
    return evaluation_block(*site_evaluations(replies), site_names(replies))
