"""Plots of the sites' own evaluation (the ledger's ``site_eval`` blocks) and the baselines.

Like ``coordinator.plots``: each function writes one PNG from ledger rows alone and returns
the series it drew, so tests and ``report.json`` can check the picture against the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coordinator.plots import Row, Series, _points, _save, plt


def site_rows(rows: Sequence[Row]) -> list[Row]:
    """The rounds whose federated evaluation reached at least one site."""
    return [r for r in rows if (r.get("site_eval") or {}).get("sites")]


def site_accuracy_plot(rows: Sequence[Row], path: Path) -> Series:
    """Accuracy per round: held-out (global), each site's own split, the worst site."""
    evaluated = site_rows(rows)
    x, heldout = _points(rows, "heldout_accuracy")
    nodes = sorted({n for r in evaluated for n in r["site_eval"]["sites"]})
    per_site = {
        node: [
            (r["round"], r["site_eval"]["sites"][node]["accuracy"])
            for r in evaluated
            if node in r["site_eval"]["sites"]
        ]
        for node in nodes
    }
    worst = [(r["round"], r["site_eval"]["worst_site"]["accuracy"]) for r in evaluated]
    fig, ax = plt.subplots(figsize=(7, 4))
    if x:  # no line when the coordinator had no held-out set (coordinator/central_set.py)
        ax.plot(x, heldout, marker="o", linewidth=2.5, color="black", label="global (held-out)")
    # A site by the name it sent (fedvlm.contract.SITE), its node id second.
    names = {n: s.get("name") for r in evaluated for n, s in r["site_eval"]["sites"].items()}
    for node, points in per_site.items():
        name = names.get(node)
        label = f"site {name} (node {node})" if name and name != node else f"site {node}"
        ax.plot(*zip(*points, strict=True), marker=".", alpha=0.8, label=label)
    if worst:
        ax.plot(*zip(*worst, strict=True), linestyle="--", color="red", label="worst site")
    ax.set(xlabel="round", ylabel="accuracy", title="Accuracy per round and site", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    _save(fig, path)
    return {
        "round": x,
        "heldout_accuracy": heldout,
        "sites": {n: [a for _, a in p] for n, p in per_site.items()},
        "worst_round": [r for r, _ in worst],
        "worst_accuracy": [a for _, a in worst],
    }


def fairness_plot(rows: Sequence[Row], path: Path) -> Series:
    """The fairness gap (best minus worst site accuracy) per round."""
    evaluated = site_rows(rows)
    x = [r["round"] for r in evaluated]
    gap = [r["site_eval"]["fairness_gap"] for r in evaluated]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x, gap, color="tab:orange")
    ax.set(xlabel="round", ylabel="best - worst site accuracy", title="Fairness gap across sites")
    ax.set_ylim(0, max([0.1, *gap]) * 1.15)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
    return {"round": x, "fairness_gap": gap}


def baselines_plot(baselines: Mapping[str, Any], path: Path) -> Series:
    """Per site: the federated adapter, it personalised, and the site training alone."""
    sites = baselines["sites"]
    names = list(sites)
    kinds = [
        ("federated", "federated (global)"),
        ("personalised", "federated + local steps"),
        ("local_only", "local only"),
    ]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.27
    series: Series = {"sites": names}
    for i, (key, label) in enumerate(kinds):
        values = [sites[name][key] for name in names]
        ax.bar([j + (i - 1) * width for j in range(len(names))], values, width, label=label)
        series[key] = values
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="validation accuracy", title="Per site: federation vs. training alone")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    # Not `_save`: its whole-number round ticks would replace the site names on this x axis.
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return series
