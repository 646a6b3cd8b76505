"""The run ledger as data: its row schema (`LedgerRow`), reading a run folder, and the totals.

The coordinator writes one `LedgerRow` per round (round 0 = the evaluation before training) as
one JSON object per line of `runs/<id>/ledger.jsonl`; every reader parses a line back through
`LedgerRow.from_json`, so a field the writer renamed or a value of the wrong type fails at
the line that holds it instead of as a missing figure in a report. Readers then work on the
row's JSON form (`to_json`): every block but "round" may be absent, and they tolerate that,
so a report can be rebuilt from the ledger of a partial run.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from fedvlm.errors import DataError

LEDGER_JSONL = "ledger.jsonl"
RUN_JSON = "run.json"
COORDINATOR = "coordinator"
NETWORK = "network"

Row = dict[str, Any]


@dataclass
class LedgerRow:
    """One round of the ledger: what the coordinator knows of it, and nothing a site withheld.

    Only ``round`` is always there; a field left None is not written (a round that failed
    before training has no accuracy, a run without DP no privacy block). Blocks are plain
    JSON objects whose own layout is documented where they are made (named below).

    Attributes
    ----------
    round : int
        0 for the evaluation before training, then 1, 2, ...
    sites : list of int
        Node ids whose update is in this round's aggregate (sites that refused are left out).
    site_names : dict
        Node id -> the name the site sent (`fedvlm.contract.SITE_NAME`), for every display.
    dropped : list of int
        Sampled nodes that sent no valid reply (error or timeout).
    errors : dict
        Node id -> the reason a site gave in its error reply (failed rounds).
    rejected : list of dict
        The strategy's rejections of updates (`strategies.validation`): node, reason.
    secagg_notes : list of str
        What secure aggregation left out and why (bad shares, late sites).
    secagg : dict
        Secure aggregation's graph degree and threshold, the threat model they were derived
        from (corrupt and dropout fractions, sigma, eta) and the failure probabilities they
        guarantee (`privacy.secagg.bounds.GraphBounds.as_record`).
    stopped : str
        Why the run stopped at this round (privacy budget spent, too few sites).
    evaluated_on : dict
        Round 0 only: what the held-out figures are measured on (``kind``: "folder" with
        ``path`` and ``examples``, "synthetic", or "sites": no central evaluation, and the
        sites' ``fed_eval_accuracy`` is the headline).
    train_loss : float
        Example-weighted mean training loss of the sites (withheld under DP).
    fed_eval_accuracy : float
        Example-weighted accuracy on the sites' own validation splits.
    heldout_accuracy, heldout_loss : float
        The coordinator's own evaluation of the new global adapter, when it has a held-out set.
    heldout_by_type : dict
        Question type -> held-out accuracy.
    site_eval : dict
        Federated evaluation in detail (`coordinator.site_evaluation`): per site, per type,
        per subgroup, worst site, and the sites' test splits apart.
    bytes_up, bytes_down : int
        Bytes of updates received / global adapters sent this round, all sites together.
    energy : dict
        Energy and carbon of the round by part, and the run's totals so far
        (`coordinator.energy_block.round_energy`).
    peak_gpu_mb, train_seconds : dict
        Node id -> that site's peak GPU memory / seconds of local training.
    seconds : float
        Wall time of the round at the coordinator.
    privacy : dict or list of dict
        The privacy account(s) after this round (`privacy.accountant`): unit "example" or
        "site", epsilon, delta and what the guarantee covers.
    """

    round: int
    sites: list[int] | None = None
    site_names: dict[str, str] | None = None
    dropped: list[int] | None = None
    errors: dict[str, str] | None = None
    rejected: list[dict[str, Any]] | None = None
    secagg_notes: list[str] | None = None
    secagg: dict[str, Any] | None = None
    stopped: str | None = None
    evaluated_on: dict[str, Any] | None = None
    train_loss: float | None = None
    fed_eval_accuracy: float | None = None
    heldout_accuracy: float | None = None
    heldout_loss: float | None = None
    heldout_by_type: dict[str, float] | None = None
    site_eval: dict[str, Any] | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    energy: dict[str, Any] | None = None
    peak_gpu_mb: dict[str, float] | None = None
    train_seconds: dict[str, float] | None = None
    seconds: float | None = None
    privacy: dict[str, Any] | list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse a value of the wrong type (raises TypeError naming the field)."""
        for name, kinds in _FIELD_TYPES.items():
            value = getattr(self, name)
            if not _is_instance(value, kinds):
                raise TypeError(
                    f"ledger field {name!r}: expected {_kind_words(kinds)}, got {value!r}"
                )

    def to_json(self) -> Row:
        """The row as written: None fields left out, keys in schema order."""
        self.check()  # fields may have been set after construction
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "ledger row") -> LedgerRow:
        """Parse one written row; `where` (e.g. ``ledger.jsonl:3``) names the line at fault.

        Raises
        ------
        DataError
            On a field the schema does not know, or a value of the wrong type.
        """
        unknown = sorted(set(data) - set(_FIELD_TYPES))
        if unknown:
            raise DataError(
                f"{where}: unknown ledger field(s) {', '.join(unknown)} "
                f"(known: {', '.join(_FIELD_TYPES)})"
            )
        try:
            return cls(**data)
        except TypeError as error:
            raise DataError(f"{where}: {error}") from None


def _outer_types(annotation: Any) -> tuple[type, ...]:
    """The JSON-level types a field may hold: `float | None` -> (float, int, NoneType)."""
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(t for arg in get_args(annotation) for t in _outer_types(arg))
    outer = get_origin(annotation) or annotation
    if outer is Any:
        return (object,)
    if outer is float:  # JSON writes 1.0 as 1
        return (float, int)
    return (outer,)


def _is_instance(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:  # True is an int to Python, not to us
        return False
    return isinstance(value, kinds)


def _kind_words(kinds: tuple[type, ...]) -> str:
    names = {
        type(None): "null",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    shown = [k for k in kinds if not (k is int and float in kinds)]  # "a number" covers both
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in shown))


_FIELD_TYPES = {f.name: _outer_types(get_type_hints(LedgerRow)[f.name]) for f in fields(LedgerRow)}


def privacy_entries(row: Row) -> list[dict[str, Any]]:
    """A row's privacy block(s): absent, one dict, or a list (one per unit)."""
    block = row.get("privacy")
    if block is None:
        return []
    return list(block) if isinstance(block, list) else [block]


def energy_parts(rows: Sequence[Row]) -> list[str]:
    """Stack order: every node id that ever appears (sorted), then coordinator, network."""
    nodes = sorted({n for r in rows for n in (r.get("energy") or {}).get("nodes", {})})
    return [*nodes, COORDINATOR, NETWORK]


def part_value(block: dict[str, Any], part: str, unit: str) -> float:
    """One part's figure in one round's energy block (0 when the part is absent)."""
    if part in (COORDINATOR, NETWORK):
        return float((block.get(part) or {}).get(unit, 0.0))
    return float(block.get("nodes", {}).get(part, {}).get(unit, 0.0))


@dataclass(frozen=True)
class RunRecord:
    """What a run left behind: its metadata (`run.json`, may be empty) and ledger rows."""

    path: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]


def read_rows(ledger: Path) -> list[Row]:
    """Every row of a ledger file, each parsed through `LedgerRow`, in round order.

    Raises
    ------
    DataError
        If a line is not JSON, or not a row of the schema (``<file>:<line>`` named).
    """
    rows = []
    for number, line in enumerate(ledger.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{ledger}:{number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise DataError(f"{ledger}:{number}: expected an object with an integer 'round'")
        rows.append(LedgerRow.from_json(row, f"{ledger}:{number}").to_json())
    return sorted(rows, key=lambda r: r["round"])


def load_run(run_dir: Path) -> RunRecord:
    """Read a run folder; errors name the file and line at fault.

    Raises
    ------
    DataError
        If the ledger is missing, empty, or a line is not a JSON object with a "round".
    """
    run_dir = Path(run_dir)
    ledger = run_dir / LEDGER_JSONL
    if not ledger.is_file():
        raise DataError(f"{ledger}: no ledger here; is {run_dir} a run folder?")
    rows = read_rows(ledger)
    if not rows:
        raise DataError(f"{ledger}: the ledger holds no rounds")
    meta_path = run_dir / RUN_JSON
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except json.JSONDecodeError as error:
        raise DataError(f"{meta_path}:{error.lineno}: not JSON ({error.msg})") from None
    return RunRecord(path=run_dir, meta=meta, rows=rows)


def _sum(values: list[float]) -> float:
    return math.fsum(values)


def energy_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Whole-run energy and carbon, overall and by part (node id, coordinator, network)."""
    blocks = [r["energy"] for r in rows if r.get("energy")]
    by_part = {}
    for part in energy_parts(rows):
        by_part[part] = {
            unit: _sum([part_value(b, part, unit) for b in blocks]) for unit in ("kwh", "gco2e")
        }
    methods: dict[str, set[str]] = {"cpu": set(), "gpu": set(), "ram": set()}
    for block in blocks:
        for component, labels in block.get("methods", {}).items():
            methods.setdefault(component, set()).update(labels)
    intensities = {}
    for block in blocks:
        for node, entry in block.get("nodes", {}).items():
            intensities[node] = entry.get("intensity_source", "unknown")
        if block.get("coordinator"):
            intensities[COORDINATOR] = block["coordinator"].get("intensity_source", "unknown")
    network = [b.get("network", {}) for b in blocks]
    return {
        "kwh": _sum([b["total"]["kwh"] for b in blocks]),
        "gco2e": _sum([b["total"]["gco2e"] for b in blocks]),
        "by_part": by_part,
        "methods": {k: sorted(v) for k, v in methods.items()},
        "intensity_sources": dict(sorted(intensities.items())),
        "fallback": sorted({site for b in blocks for site in b.get("fallback", [])}),
        "network_kwh_per_gb": sorted({n["kwh_per_gb"] for n in network if "kwh_per_gb" in n}),
        "rounds_metered": len(blocks),
    }


def _evaluated_on_words(source: dict[str, Any]) -> str:
    if source.get("kind") == "folder":
        return f"held-out accuracy on {source['path']} ({source['examples']} examples)"
    if source.get("kind") == "synthetic":
        n = source.get("examples")
        return "held-out accuracy on the synthetic radiograph set" + (
            f" ({n} examples)" if n else ""
        )
    n = source.get("examples")
    return "federated validation accuracy (example-weighted over the sites' validation " + (
        f"splits, {n} examples)" if n else "splits)"
    )


def headline(rows: Sequence[Row]) -> dict[str, Any]:
    """The run's one accuracy, what it was measured on, before/final/best and the worst site.

    The coordinator's held-out accuracy when it evaluated one (round 0's ``evaluated_on``
    names the set; a ledger from before that key was synthetic); otherwise the sites'
    example-weighted validation accuracy, the only figure measured on the sites' own kind
    of data.
    """
    first = rows[0] if rows and rows[0]["round"] == 0 else {}
    central = any(r.get("heldout_accuracy") is not None for r in rows)
    key = "heldout_accuracy" if central else "fed_eval_accuracy"
    source = first.get("evaluated_on") or ({"kind": "synthetic"} if central else {"kind": "sites"})
    series = [r for r in rows if r.get(key) is not None]
    last_sites = next((r["site_eval"] for r in reversed(rows) if r.get("site_eval")), {})
    if not central and last_sites.get("sites"):
        source = {**source, "examples": sum(s["examples"] for s in last_sites["sites"].values())}
    return {
        "metric": key,
        "evaluated_on": source,
        "label": _evaluated_on_words(source),
        "before": first.get(key),
        "final": series[-1][key] if series else None,
        "best": max((r[key] for r in series), default=None),
        "worst_site": last_sites.get("worst_site"),
    }


def headline_sentence(head: dict[str, Any]) -> str:
    """E.g. ``held-out accuracy on /data/held (200 examples) 0.100 -> 0.850``, worst site."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    text = f"{head['label']} {fmt(head['before'])} -> {fmt(head['final'])}"
    worst = head.get("worst_site")
    if worst:
        text += f" (worst site {worst.get('name', worst['node'])}: {fmt(worst['accuracy'])})"
    return text


def summarize(run: RunRecord) -> dict[str, Any]:
    """The numbers a reader wants first: accuracy before/after, privacy, energy, federation."""
    rows = run.rows
    trained = [r for r in rows if r["round"] > 0]
    accuracy = [r for r in rows if r.get("heldout_accuracy") is not None]
    sites = sorted({str(s) for r in rows for s in r.get("sites", [])})
    privacy_final = {}
    for row in rows:
        for entry in privacy_entries(row):
            privacy_final[str(entry.get("unit", "example"))] = entry
    meta = run.meta
    return {
        "run_id": meta.get("run_id", run.path.name),
        "base_model": meta.get("base_model", "unknown"),
        "strategy": meta.get("strategy", "unknown"),
        "started": meta.get("started"),
        "ended": meta.get("ended"),
        "rounds": max((r["round"] for r in trained), default=0),
        "sites": sites,
        # Node id -> the name each site sent (the latest one), for every display of a site.
        "site_names": {n: name for r in rows for n, name in (r.get("site_names") or {}).items()},
        "dropped": sorted({str(s) for r in rows for s in r.get("dropped", [])}),
        "rejected": sum(len(r.get("rejected", [])) for r in rows),
        "heldout_accuracy_before": rows[0].get("heldout_accuracy")
        if rows[0]["round"] == 0
        else None,
        "heldout_accuracy_final": accuracy[-1]["heldout_accuracy"] if accuracy else None,
        "heldout_accuracy_best": max((r["heldout_accuracy"] for r in accuracy), default=None),
        "fed_eval_accuracy_final": next(
            (
                r["fed_eval_accuracy"]
                for r in reversed(rows)
                if r.get("fed_eval_accuracy") is not None
            ),
            None,
        ),
        # Sites' test splits, never trained on: reported apart, never part of the headline.
        "test_accuracy_final": next(
            (
                r["site_eval"]["test"]["weighted_accuracy"]
                for r in reversed(rows)
                if (r.get("site_eval") or {}).get("test")
            ),
            None,
        ),
        "headline": headline(rows),
        "privacy": privacy_final,
        "energy": energy_totals(rows),
        "bytes_up": sum(r.get("bytes_up") or 0 for r in rows),
        "bytes_down": sum(r.get("bytes_down") or 0 for r in rows),
        "seconds": _sum([r.get("seconds") or 0.0 for r in rows]),
    }
