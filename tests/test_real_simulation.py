"""`fedvlm simulate --sites DIR --run-config 'heldout-path="HELD"'` through Flower's engine.

Three site folders of real scanned digits (tests/real_images.py), 2 rounds of 2 steps: the
simulated sites read their folders, and the run reports held-out accuracy on HELD.
"""

import json

import pytest

from cli.main import main
from coordinator.ledger import read_ledger
from tests.real_images import write_digit_sites

pytestmark = pytest.mark.slow


def test_simulate_on_site_folders_reports_accuracy_on_the_heldout_folder(tmp_path, capfd):
    sites_dir, heldout = write_digit_sites(tmp_path, sites=3, per_site=16)

    code = main(
        [
            "simulate",
            "--scenario",
            "smoke",
            "--sites",
            str(sites_dir),
            "--run-config",
            f'heldout-path="{heldout}"',
            "--run-config",
            'run-name="real"',
            "--run-dir",
            str(tmp_path / "runs"),
            "--no-baselines",
        ]
    )

    assert code == 0
    run_dir = tmp_path / "runs" / "real"
    rows = read_ledger(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["evaluated_on"] == {
        "kind": "folder",
        "path": str(heldout.resolve()),
        "examples": 16,
    }
    for row in rows[1:]:
        assert len(row["sites"]) == 3  # num-supernodes followed the folders
        assert 0.0 <= row["heldout_accuracy"] <= 1.0
        # Each site evaluated its own folder's validation split (every 4th of 16 images).
        assert [s["examples"] for s in row["site_eval"]["sites"].values()] == [4, 4, 4]
    summary = json.loads((run_dir / "report.json").read_text())["summary"]
    assert summary["headline"]["evaluated_on"]["path"] == str(heldout.resolve())
    assert f"held-out accuracy on {heldout.resolve()} (16 examples)" in capfd.readouterr().out
