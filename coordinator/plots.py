"""The run's PNG plots, drawn from ledger rows alone.

Each function takes the ledger rows, writes one PNG and returns the series it plotted, so a
test (or a reader of `report.json`) can check the picture against the ledger without
decoding pixels. Files are written without timestamps: the same ledger gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a coordinator or in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedvlm.ledger_schema import COORDINATOR, NETWORK, energy_parts, part_value, privacy_entries  # noqa: E402

Row = dict[str, Any]
Series = dict[str, Any]


def _save(fig: Any, path: Path) -> None:
    for ax in fig.axes:  # rounds are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # No "Software" stamp varies between matplotlib builds; PNG from Agg carries no date.
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def _points(rows: Sequence[Row], key: str) -> tuple[list[int], list[float]]:
    """(rounds, values) of a top-level number, skipping rounds where it is absent."""
    pairs = [(r["round"], float(r[key])) for r in rows if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def accuracy_plot(rows: Sequence[Row], path: Path) -> Series:
    """Held-out accuracy per round (round 0 = before training), with the sites' own mean."""
    x, y = _points(rows, "heldout_accuracy")
    fx, fy = _points(rows, "fed_eval_accuracy")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if x:  # no line when the coordinator had no held-out set (coordinator/central_set.py)
        ax.plot(x, y, marker="o", label="held-out (coordinator)")
    if fx:
        ax.plot(fx, fy, marker="s", linestyle="--", label="sites' validation (weighted mean)")
    ax.set(xlabel="round", ylabel="accuracy", title="Accuracy per round", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return {"round": x, "heldout_accuracy": y, "fed_eval_round": fx, "fed_eval_accuracy": fy}


def epsilon_plot(rows: Sequence[Row], path: Path) -> Series:
    """Cumulative epsilon per round and privacy unit.

    The ledger's epsilon is the accountant's guarantee after that round, which already
    composes every earlier round, so it is plotted as given.
    """
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        for entry in privacy_entries(row):
            if entry.get("epsilon") is None:
                continue
            unit = str(entry.get("unit", "example"))
            curves.setdefault(unit, ([], []))
            curves[unit][0].append(row["round"])
            curves[unit][1].append(float(entry["epsilon"]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for unit, (x, y) in sorted(curves.items()):
        ax.plot(x, y, marker="o", label=f"{unit}-level epsilon")
    ax.set(xlabel="round", ylabel="epsilon (cumulative)", title="Privacy spent")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return {unit: {"round": x, "epsilon": y} for unit, (x, y) in sorted(curves.items())}


def energy_plot(rows: Sequence[Row], path: Path) -> Series:
    """Cumulative kWh and gCO2e, stacked by node, coordinator and network."""
    metered = [r for r in rows if r.get("energy")]
    parts = energy_parts(metered)
    x = [r["round"] for r in metered]
    series: Series = {"round": x}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, unit, label in zip(axes, ("kwh", "gco2e"), ("kWh", "gCO2e"), strict=True):
        stacks = {}
        for part in parts:
            running, total = [], 0.0
            for row in metered:
                total += part_value(row["energy"], part, unit)
                running.append(total)
            stacks[part] = running
        labels = [p if p in (COORDINATOR, NETWORK) else f"site {p}" for p in parts]
        if x:
            ax.stackplot(x, *stacks.values(), labels=labels)
        ax.set(xlabel="round", ylabel=f"cumulative {label}", title=f"Cumulative {label}")
        ax.grid(alpha=0.3)
        series[unit] = stacks
    if x:
        axes[1].legend(loc="upper left", fontsize="small")
    _save(fig, path)
    return series


def bytes_plot(rows: Sequence[Row], path: Path) -> Series:
    """Megabytes up (sites to coordinator) and down per round."""
    counted = [r for r in rows if r.get("bytes_up") is not None or r.get("bytes_down") is not None]
    x = [r["round"] for r in counted]
    up = [(r.get("bytes_up") or 0) / 1e6 for r in counted]
    down = [(r.get("bytes_down") or 0) / 1e6 for r in counted]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.4
    ax.bar([v - width / 2 for v in x], down, width, label="down (to sites)")
    ax.bar([v + width / 2 for v in x], up, width, label="up (to coordinator)")
    ax.set(xlabel="round", ylabel="MB", title="Bytes on the wire per round")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    _save(fig, path)
    return {"round": x, "mb_up": up, "mb_down": down}
