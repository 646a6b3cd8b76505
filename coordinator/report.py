"""The run report, rebuilt from the run folder's ledger alone.

`fedvlm report RUN_DIR` reads `ledger.jsonl` and
`run.json` (and `baselines.json` when a simulation left one), writes the PNG plots under
`plots/`, a `report.json` summary with the plotted series, the model card `adapter/README.md`
and one self-contained page `report.html` (coordinator/html_report.py). Nothing else is
consulted, so a report can be regenerated anywhere the run folder is copied, and twice gives
the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coordinator import plots, site_plots
from coordinator.html_report import read_baselines, write_html_report
from coordinator.model_card import write_model_card
from fedvlm.ledger_schema import load_run, privacy_entries, summarize

PLOTS_DIR = "plots"
REPORT_JSON = "report.json"


def build_report(run_dir: Path) -> dict[str, Any]:
    """Write the plots, `report.json` and the model card of a run; return what was written.

    Returns
    -------
    dict
        ``{"summary": ..., "plots": {name: {"path": str, "series": ...}}, "model_card": str,
        "html": str}`` with paths relative to the run folder.
    """
    run = load_run(Path(run_dir))
    folder = run.path / PLOTS_DIR
    drawn: dict[str, Any] = {}
    private = any(privacy_entries(r) for r in run.rows)
    makers = [
        ("accuracy", plots.accuracy_plot),
        ("energy", plots.energy_plot),
        ("bytes", plots.bytes_plot),
    ]
    if private:
        makers.insert(1, ("epsilon", plots.epsilon_plot))
    if site_plots.site_rows(run.rows):
        makers[:0] = [("site_accuracy", site_plots.site_accuracy_plot)]
        makers.append(("fairness", site_plots.fairness_plot))
    # Non-DP baselines (local-only, personalised) never appear beside a DP run's figures.
    baselines = None if private else read_baselines(run.path)
    if baselines:
        makers.append(("baselines", lambda _rows, path: site_plots.baselines_plot(baselines, path)))
    for name, draw in makers:
        path = folder / f"{name}.png"
        drawn[name] = {"path": str(path.relative_to(run.path)), "series": draw(run.rows, path)}
    summary = summarize(run)
    card_path = write_model_card(run, summary)
    html_path = write_html_report(
        run,
        summary,
        {name: run.path / entry["path"] for name, entry in drawn.items()},
        card_path.read_text(),
        baselines,
    )
    report = {
        "summary": summary,
        "plots": drawn,
        "model_card": str(card_path.relative_to(run.path)),
        "html": str(html_path.relative_to(run.path)),
    }
    (run.path / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
