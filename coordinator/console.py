"""The per-round table on the console, one line per round as rounds complete.

Lines, not a live-updating widget: in a simulation the ServerApp's output reaches the user
through Flower's log stream, which carries plain lines, so a table printed row by row reads
the same in a terminal, in `flwr log` and in a CI log.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """One column: header, width and how to format its value from a ledger row."""

    header: str
    width: int
    value: Callable[[dict[str, Any]], str]


def _num(key: str, fmt: str) -> Callable[[dict[str, Any]], str]:
    def value(row: dict[str, Any]) -> str:
        v = row
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        return "-" if v is None else format(v, fmt)

    return value


def _epsilon(row: dict[str, Any]) -> str:
    """Privacy spent against the budget, e.g. `3.21/8` (per-site maximum at sample level)."""
    privacy = row.get("privacy") or {}
    if privacy.get("epsilon") is None:
        return "-"
    budget = privacy.get("budget_epsilon")
    spent = format(privacy["epsilon"], ".2f")
    return spent if budget is None else f"{spent}/{budget:g}"


def _mb(key: str) -> Callable[[dict[str, Any]], str]:
    def value(row: dict[str, Any]) -> str:
        v = row.get(key)
        return "-" if v is None else f"{v / 1e6:.2f}"

    return value


COLUMNS = (
    Column("round", 5, _num("round", "d")),
    Column("sites", 5, lambda r: str(len(r.get("sites", [])))),
    Column("train loss", 10, _num("train_loss", ".4f")),
    Column("site acc", 8, _num("fed_eval_accuracy", ".3f")),
    Column("worst site", 10, _num("site_eval.worst_site.accuracy", ".3f")),
    Column("held-out acc", 12, _num("heldout_accuracy", ".3f")),
    Column("eps/budget", 10, _epsilon),
    Column("kWh", 9, _num("energy.total.kwh", ".2e")),
    Column("gCO2e", 8, _num("energy.total.gco2e", ".3f")),
    Column("MB up", 7, _mb("bytes_up")),
    Column("MB down", 7, _mb("bytes_down")),
    Column("seconds", 7, _num("seconds", ".1f")),
)


def header() -> str:
    """The table's header and rule."""
    names = " | ".join(c.header.rjust(c.width) for c in COLUMNS)
    return f"{names}\n{'-' * len(names)}"


def progress(done: int, total: int, width: int = 20) -> str:
    """A text progress bar across rounds, e.g. `[########------------] 2/5`."""
    filled = round(width * done / total) if total else width
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}"


def row_line(row: dict[str, Any], total_rounds: int | None = None) -> str:
    """One ledger row as a table line (absent values print as '-'), then the progress bar."""
    line = " | ".join(c.value(row).rjust(c.width) for c in COLUMNS)
    if total_rounds is None:
        return line
    return f"{line}  {progress(int(row['round']), total_rounds)}"
