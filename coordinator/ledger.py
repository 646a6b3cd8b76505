"""The per-round ledger: one JSON object per round, appended before the next round starts.

JSONL is the source of truth (every block a round produces: metrics, privacy, energy,
bytes, who dropped or was rejected); the CSV beside it is a flat view of the scalar columns
for spreadsheets, rewritten from the JSONL after every round.
"""

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedvlm.atomic import write_atomic
from fedvlm.ledger_schema import LEDGER_JSONL, LedgerRow, read_rows

LEDGER_CSV = "ledger.csv"


def read_ledger(run_dir: Path) -> list[dict[str, Any]]:
    """Read every complete round of a run, in order (none before the first is written)."""
    path = run_dir / LEDGER_JSONL
    return read_rows(path) if path.exists() else []


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested blocks become dotted columns; lists become their length-free JSON text."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def _csv_text(rows: Iterable[dict[str, Any]]) -> str:
    flat_rows = [_flatten(r) for r in rows]
    columns: list[str] = []
    for r in flat_rows:
        columns.extend(c for c in r if c not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(flat_rows)
    return buffer.getvalue()


def append_round(run_dir: Path, row: LedgerRow) -> None:
    """Append one round atomically (JSONL rewritten whole, then the CSV view).

    Rewriting instead of appending in place means a crash mid-write can never leave a
    truncated last line that a resumed coordinator would misread.
    """
    rows = [r for r in read_ledger(run_dir) if r["round"] != row.round]
    rows.append(row.to_json())
    rows.sort(key=lambda r: r["round"])
    _write_rows(run_dir, rows)


def truncate_ledger(run_dir: Path, last_round: int) -> list[dict[str, Any]]:
    """Keep only rounds up to `last_round`; return the rows kept.

    A coordinator killed after writing a round's row but before its checkpoint resumes from
    the previous round and repeats this one: its stale row must go before anything reads
    "the last row" (cumulative energy, epsilon), or that round would be counted twice.
    """
    rows = [r for r in read_ledger(run_dir) if r["round"] <= last_round]
    _write_rows(run_dir, rows)
    return rows


def _write_rows(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    write_atomic(run_dir / LEDGER_JSONL, text.encode())
    write_atomic(run_dir / LEDGER_CSV, _csv_text(rows).encode())
