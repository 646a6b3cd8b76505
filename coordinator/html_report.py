"""One self-contained HTML page per run (`runs/<id>/report.html`), rebuilt from the ledger.

A hospital's reviewer opens one file, possibly offline or on a locked-down machine: so the
page has no script, loads nothing (plots are inline base64 PNGs, styles inline) and says so to
the browser with a Content-Security-Policy that forbids every fetch but inline images. Every
figure on it comes from `ledger.jsonl`, `run.json` and, in simulation, `baselines.json`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from coordinator.site_plots import site_rows
from fedvlm.errors import DataError
from fedvlm.ledger_schema import COORDINATOR, NETWORK, RunRecord

REPORT_HTML = "report.html"
BASELINES_JSON = "baselines.json"  # written by simulations/baselines.py next to the ledger
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.worst { background: #fde2e2; } .muted { color: #777; }
.kv td:last-child { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; flex: 1 1 480px; max-width: 720px; } img { width: 100%; }
.card { border: 1px solid #ddd; padding: 0 1em; } .card h1 { font-size: 1.3em; }
.card h2 { font-size: 1.1em; border: none; }
pre { background: #f7f7f7; padding: 1em; white-space: pre-wrap; font-size: .85em; }
"""
PLOT_TITLES = {
    "site_accuracy": "Accuracy per round: global (held-out), each site, worst site",
    "accuracy": "Accuracy per round: the coordinator's held-out set (if it has one) and the "
    "sites' weighted mean",
    "fairness": "Fairness gap (best minus worst site) per round",
    "baselines": "Federated vs. personalised vs. local-only, per site",
    "epsilon": "Privacy spent (cumulative ε)",
    "energy": "Cumulative energy and carbon by node, coordinator and network",
    "bytes": "Bytes on the wire per round",
}


def read_baselines(run_dir: Path) -> dict[str, Any] | None:
    """The run's `baselines.json` (federated / personalised / local-only per site), if any."""
    path = Path(run_dir) / BASELINES_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not JSON ({error.msg})") from None


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _table(header: list[str], rows: list[list[Any]], marked: set[int] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    head = f"<tr>{head}</tr>" if header else ""
    body = "".join(
        f"<tr{' class=worst' if marked and i in marked else ''}>"
        + "".join(f"<td>{escape(str(c))}</td>" for c in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table>{head}{body}</table>"


def _image(path: Path, title: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{escape(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption class=muted>{escape(title)}</figcaption></figure>"
    )


def _glance(run: RunRecord, summary: Mapping[str, Any]) -> str:
    config = run.meta.get("run_config", {})
    privacy = [
        f"{unit}-level ε = {_fmt(e.get('epsilon'), '.3g')}, δ = {_fmt(e.get('delta'), '.3g')}"
        for unit, e in sorted(summary["privacy"].items())
    ]
    rows = [
        ["Run", summary["run_id"]],
        ["Base model", summary["base_model"]],
        ["Sites", f"{len(summary['sites'])} ({', '.join(summary['sites']) or '–'})"],
        ["Rounds", summary["rounds"]],
        ["Strategy", summary["strategy"]],
        [
            "Local steps / learning rate",
            f"{_fmt(config.get('local-steps'))} / {_fmt(config.get('learning-rate'), 'g')}",
        ],
        ["LoRA rank", _fmt(config.get("lora-rank"))],
        ["Differential privacy", str(config.get("dp-mode", "none"))],
        ["Privacy spent", "; ".join(privacy) or "no formal guarantee (no DP)"],
        ["Secure aggregation", "on" if config.get("secure-aggregation") else "off"],
        ["Smallest reported subgroup", _fmt(config.get("eval-min-subgroup", 10))],
        [
            "Dropped replies / rejected updates",
            f"{', '.join(summary['dropped']) or 'none'} / {summary['rejected']}",
        ],
        [
            "Accuracy",
            f"{summary['headline']['label']}: {_fmt(summary['headline']['before'])} before → "
            f"{_fmt(summary['headline']['final'])} after",
        ],
        [
            "Energy / carbon",
            f"{summary['energy']['kwh']:.4g} kWh / "
            f"{summary['energy']['gco2e']:.4g} gCO2e (estimates, see below)",
        ],
        [
            "Bytes",
            f"{summary['bytes_down'] / 1e6:.3f} MB down, {summary['bytes_up'] / 1e6:.3f} MB up",
        ],
    ]
    return _table([], [[k, _fmt(v)] for k, v in rows]).replace("<table>", "<table class=kv>")


def _site_label(node: str, entry: dict[str, Any]) -> str:
    """A site by the name it sent, its node id second (``hospital-a (node 1722...)``)."""
    name = entry.get("name")
    return f"{name} (node {node})" if name and name != node else f"site {node}"


def _sites(rows: list[dict[str, Any]]) -> str:
    """The last evaluated round: each site, per type, per subgroup (suppressed as such)."""
    evaluated = site_rows(rows)
    if not evaluated:
        return "<p class=muted>No federated evaluation was recorded.</p>"
    last = evaluated[-1]
    block = last["site_eval"]
    sites = block["sites"]
    tuned = any("personalised_accuracy" in s for s in sites.values())
    tested = "test" in block  # sites' test splits, reported apart from validation
    header = (
        ["site", "examples", "accuracy", "loss"]
        + (["personalised acc."] if tuned else [])
        + (["test examples", "test acc."] if tested else [])
    )
    table = [
        [_site_label(node, s), s["examples"], _fmt(s["accuracy"]), _fmt(s["loss"])]
        + ([_fmt(s.get("personalised_accuracy"))] if tuned else [])
        + ([s.get("test", {}).get("n", 0), _fmt(s.get("test", {}).get("accuracy"))] * tested)
        for node, s in sites.items()
    ]
    worst = {list(sites).index(block["worst_site"]["node"])}
    worst_label = escape(_site_label(block["worst_site"]["node"], block["worst_site"]))
    parts = [
        f"<p>Round {last['round']}: example-weighted mean <b>{_fmt(block['weighted_accuracy'])}"
        f"</b>, worst site <b>{worst_label}</b> at "
        f"{_fmt(block['worst_site']['accuracy'])}, fairness gap "
        f"<b>{_fmt(block['fairness_gap'])}</b>"
        + (f"; failed: {escape(', '.join(block['failed']))}" if block["failed"] else "")
        + ".</p>",
        _table(header, table, worst),
    ]
    types = sorted({t for s in sites.values() for t in s["by_type"]})
    if types:
        parts.append("<h3>Per question type</h3>")
        parts.append(
            _table(
                ["site", *types],
                [
                    [f"site {node}"]
                    + [
                        f"{_fmt(s['by_type'][t]['accuracy'])} (n={s['by_type'][t]['n']})"
                        if t in s["by_type"]
                        else "–"
                        for t in types
                    ]
                    for node, s in sites.items()
                ]
                + [["all sites"] + [_fmt(block["by_type"][t]["accuracy"]) for t in types]],
            )
        )
    groups = [
        [
            f"site {node}",
            name,
            value,
            g["n"],
            "suppressed" if g["accuracy"] is None else _fmt(g["accuracy"]),
        ]
        for node, s in sites.items()
        for name, values in s["subgroups"].items()
        for value, g in values.items()
    ]
    if groups:
        parts.append(
            "<h3>Per subgroup</h3><p class=muted>Accuracies of groups too small to report "
            "(and of the groups that would reveal them by subtraction) never left the "
            "sites.</p>"
        )
        parts.append(_table(["site", "field", "value", "examples", "accuracy"], groups))
    return "".join(parts)


def _baselines(baselines: Mapping[str, Any] | None) -> str:
    if not baselines:
        return (
            "<p class=muted>No baselines recorded for this run (in simulation: "
            "<code>python -m simulations.baselines RUN_DIR</code>).</p>"
        )
    rows = [
        [name, _fmt(s["federated"]), _fmt(s["personalised"]), _fmt(s["local_only"])]
        for name, s in baselines["sites"].items()
    ]
    return (
        f"<p>Validation accuracy on each site's own split. Personalised: the final adapter "
        f"after {baselines['personalise_steps']} local steps at the site. Local only: the "
        f"site training alone for the run's {baselines['local_only_steps']} steps. Simulated "
        "sites are named by partition here (site-k); the coordinator knows them by node id "
        "only.</p>" + _table(["site", "federated", "personalised", "local only"], rows)
    )


def _energy(summary: Mapping[str, Any]) -> str:
    energy = summary["energy"]
    rows = [
        [
            part if part in (COORDINATOR, NETWORK) else f"site {part}",
            f"{v['kwh']:.4g}",
            f"{v['gco2e']:.4g}",
            energy["intensity_sources"].get(part, "–"),
        ]
        for part, v in energy["by_part"].items()
    ]
    methods = "; ".join(
        f"{c.upper()}: {', '.join(labels) or 'none'}" for c, labels in energy["methods"].items()
    )
    return _table(["part", "kWh", "gCO2e", "carbon intensity from"], rows) + (
        f"<p class=muted>Measurement: {escape(methods)}. Network: bytes × kWh/GB.</p>"
    )


def _card(text: str) -> str:
    """The model card: its Markdown body rendered (raw HTML off), its YAML metadata folded."""
    _, front, body = text.split("---\n", 2) if text.startswith("---\n") else ("", "", text)
    rendered = MarkdownIt("commonmark", {"html": False}).enable("table").render(body)
    meta = (
        f"<details><summary>Hub metadata (YAML)</summary><pre>{escape(front)}</pre></details>"
        if front
        else ""
    )
    return f"<div class=card>{meta}{rendered}</div>"


def render_html(
    run: RunRecord,
    summary: Mapping[str, Any],
    plots: Mapping[str, Path],
    card_text: str,
    baselines: Mapping[str, Any] | None = None,
) -> str:
    """The page: at a glance, sites and fairness, baselines, privacy, energy, bytes, card."""

    def figures(*names: str) -> str:
        inner = "".join(_image(plots[n], PLOT_TITLES[n]) for n in names if n in plots)
        return f"<div class=grid>{inner}</div>"

    title = f"fedvlm run {summary['run_id']}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            "<h2>Federation at a glance</h2>",
            _glance(run, summary),
            "<h2>Accuracy per round</h2>",
            figures("site_accuracy", "accuracy"),
            "<h2>Sites and fairness</h2>",
            figures("fairness"),
            _sites(run.rows),
            "<h2>Federated vs. personalised vs. local-only</h2>",
            _baselines(baselines),
            figures("baselines"),
            "<h2>Privacy</h2>",
            figures("epsilon")
            if "epsilon" in plots
            else "<p>No differential privacy: no ε to plot.</p>",
            "<h2>Energy and carbon</h2>",
            figures("energy"),
            _energy(summary),
            "<h2>Bytes per round</h2>",
            figures("bytes"),
            "<h2>Model card</h2>",
            _card(card_text),
            "</body></html>",
        ]
    )


def write_html_report(
    run: RunRecord,
    summary: Mapping[str, Any],
    plots: Mapping[str, Path],
    card_text: str,
    baselines: Mapping[str, Any] | None = None,
) -> Path:
    """Write `report.html` into the run folder; return its path."""
    path = run.path / REPORT_HTML
    path.write_text(render_html(run, summary, plots, card_text, baselines), encoding="utf-8")
    return path
