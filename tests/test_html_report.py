"""The self-contained HTML run report: built from the ledger, rendered by real headless Chromium.

The browser must show it without a console error and without a single request beyond the
file itself; a control page with an external image and a console error proves the harness
would notice either.
"""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from browser import load_page
from energy_helpers import reading
from PIL import Image

from coordinator.energy_block import round_energy
from coordinator.report import build_report
from coordinator.site_evaluation import evaluation_block
from fedvlm.energy.settings import IntensitySource
from fedvlm.site_metrics import SiteEvaluation

NODES = ("11", "22", "33")
ROUNDS = 3


def _site(accuracy: float, n: int) -> SiteEvaluation:
    return SiteEvaluation(
        examples=n,
        loss=1.0 - accuracy,
        accuracy=accuracy,
        by_type={"presence": (n // 2, accuracy), "count": (n - n // 2, accuracy / 2)},
        subgroups={"scanner": {"A": (n - 8, accuracy), "B": (4, None), "C": (4, None)}},
        personalised_accuracy=min(1.0, accuracy + 0.05),
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run-html"
    path.mkdir()
    meta = {
        "run_id": "run-html",
        "base_model": "embedded",
        "strategy": "fedavg",
        "run_config": {"dp-mode": "sample", "local-steps": 4, "learning-rate": 0.01},
    }
    (path / "run.json").write_text(json.dumps(meta))
    rows = [{"round": 0, "sites": [], "heldout_accuracy": 0.34, "heldout_loss": 1.2}]
    block = None
    for rnd in range(1, ROUNDS + 1):
        block = round_energy(
            {n: reading(1e-5 * rnd, 300.0, IntensitySource.COUNTRY, "FRA") for n in NODES},
            reading(2e-6, 300.0, IntensitySource.COUNTRY, "FRA"),
            {n: 300_000 for n in NODES},
            900_000,
            0.06,
            previous=block,
        )
        sites = {n: _site(0.3 + 0.1 * rnd + 0.05 * i, 20 + 10 * i) for i, n in enumerate(NODES)}
        site_eval = evaluation_block(sites, [])
        rows.append(
            {
                "round": rnd,
                "sites": list(NODES),
                "fed_eval_accuracy": site_eval["weighted_accuracy"],
                "heldout_accuracy": 0.35 + 0.15 * rnd,
                "heldout_loss": 1.0 / rnd,
                "bytes_up": 900_000,
                "bytes_down": 900_000,
                "energy": block,
                "site_eval": site_eval,
                "privacy": {"unit": "example", "epsilon": 1.5 * rnd, "delta": 1e-5},
            }
        )
    (path / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    baselines = {
        "personalise_steps": 4,
        "local_only_steps": 12,
        "sites": {
            f"site-{i}": {"federated": 0.6, "personalised": 0.65, "local_only": 0.4}
            for i in range(3)
        },
    }
    (path / "baselines.json").write_text(json.dumps(baselines))
    return path


def test_report_html_is_self_contained_and_holds_the_ledger_figures(run_dir: Path) -> None:
    report = build_report(run_dir)
    assert report["html"] == "report.html"
    html = (run_dir / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count('src="data:image/png;base64,') == len(report["plots"])
    assert {"site_accuracy", "fairness", "epsilon", "energy", "bytes"} <= set(report["plots"])
    # A DP run never shows non-private baselines, even when a baselines.json lies beside it.
    assert "baselines" not in report["plots"] and "No baselines recorded" in html
    series = report["plots"]["site_accuracy"]["series"]
    for i, worst in enumerate(series["worst_accuracy"]):
        assert worst == pytest.approx(min(s[i] for s in series["sites"].values()))
    gaps = report["plots"]["fairness"]["series"]["fairness_gap"]
    assert gaps == pytest.approx([0.1] * ROUNDS)
    assert "worst site <b>site 11</b>" in html
    assert "suppressed" in html and ">B<" in html  # the small group shows no accuracy
    assert "co2_eq_emissions" in html and "<h2>Privacy</h2>" in html  # the model card
    assert "example-level ε = 4.5" in html


def test_report_renders_in_headless_chromium_without_errors_or_requests(
    run_dir: Path, tmp_path: Path
) -> None:
    build_report(run_dir)
    page = run_dir / "report.html"
    load = load_page(page)
    assert load.console_errors == []
    assert load.network_requests(page.resolve().as_uri()) == []
    assert load.title == "fedvlm run run-html"
    shot = Image.open(io.BytesIO(load.screenshot)).convert("L")
    assert shot.width >= 1000 and shot.height > 3000  # the whole page, plots included
    pixels = np.asarray(shot, dtype=float)
    assert pixels.std() > 20  # not a blank page
    keep = os.environ.get("FEDVLM_SCREENSHOT")
    if keep:  # for a person to look at
        Path(keep).write_bytes(load.screenshot)


def test_the_browser_harness_notices_requests_and_console_errors(tmp_path: Path) -> None:
    control = tmp_path / "control.html"
    control.write_text(
        "<!DOCTYPE html><html><head><title>control</title></head><body>"
        '<img src="http://127.0.0.1:9/pixel.png">'
        '<script>console.error("boom")</script></body></html>'
    )
    load = load_page(control)
    assert "http://127.0.0.1:9/pixel.png" in load.network_requests(control.as_uri())
    assert any("boom" in e for e in load.console_errors)


def test_a_run_without_dp_shows_its_baselines(run_dir: Path) -> None:
    ledger = run_dir / "ledger.jsonl"
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    ledger.write_text("".join(json.dumps({**r, "privacy": None}) + "\n" for r in rows))
    report = build_report(run_dir)
    assert "baselines" in report["plots"] and "epsilon" not in report["plots"]
