"""What a run on real sites reports as its result: held-out accuracy on HELD, or the sites'.

The coordinator's real ServerApp main and the real ClientApp on three site folders of real
scanned digits (tests/real_images.py), joined by `simulations.in_process.InProcessGrid`.

Mutation check: making ``coordinator.central_set.central_set`` return the synthetic set
whatever ``site-data`` says (the bug this guards against) fails
``test_real_sites_without_heldout_path_report_the_sites_accuracy_and_nothing_synthetic``.
"""

import json
import shutil
from pathlib import Path

import pytest

from cli.main import main
from client import app as client_app
from coordinator.ledger import read_ledger
from fedvlm.adapter import set_adapter_state
from fedvlm.config import RunSettings
from fedvlm.data.imagefolder import read_imagefolder
from fedvlm.training import evaluate
from fedvlm.vlm import initial_adapter, load_peft_model
from simulations.in_process import InProcessGrid, run_coordinator
from tests.real_images import write_digit_sites

SITES = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_digit_sites(tmp_path_factory.mktemp("digits"), sites=SITES, per_site=16)


def _run(tmp_path, sites_dir, **extra) -> tuple[list[dict], str]:
    config = {
        "num-server-rounds": 1,
        "local-steps": 2,
        "batch-size": 4,
        "min-train-nodes": SITES,
        "min-available-nodes": SITES,
        "node-wait-timeout": 5.0,
        "energy-tracking": False,
        "site-data": "folders",
        "sim-sites": str(sites_dir),
        "run-dir": str(tmp_path),
        "run-name": "real",
        **extra,
    }
    run_coordinator(InProcessGrid(client_app.app, config, [{}] * SITES), config)
    return read_ledger(tmp_path / "real"), config


def _texts(run_dir) -> dict[str, str]:
    return {
        "card": (run_dir / "adapter" / "README.md").read_text(),
        "html": (run_dir / "report.html").read_text(),
        "report": (run_dir / "report.json").read_text(),
    }


# The same with secure aggregation: the round-0 site evaluation is plain scalars, as every
# round's is, and training goes through the masked protocol.
@pytest.mark.parametrize("extra", [{}, {"secure-aggregation": True}], ids=["plain", "secagg"])
def test_real_sites_without_heldout_path_report_the_sites_accuracy_and_nothing_synthetic(
    tmp_path, folders, capsys, extra
):
    sites_dir, _ = folders
    rows, _ = _run(tmp_path, sites_dir, **extra)
    out = capsys.readouterr().out

    assert rows[0]["evaluated_on"] == {"kind": "sites"}
    assert all("heldout_accuracy" not in r and "heldout_loss" not in r for r in rows)
    # Round 0: the sites evaluated the initial adapter, the "before" of the headline.
    assert len(rows[0]["site_eval"]["sites"]) == SITES
    for row in rows:
        assert 0.0 <= row["fed_eval_accuracy"] <= 1.0
    summary = json.loads((tmp_path / "real" / "report.json").read_text())["summary"]
    assert summary["headline"]["metric"] == "fed_eval_accuracy"
    assert summary["headline"]["final"] == rows[-1]["fed_eval_accuracy"]
    assert summary["headline"]["evaluated_on"]["examples"] == sum(
        s["examples"] for s in rows[-1]["site_eval"]["sites"].values()
    )
    line = next(x for x in out.splitlines() if "adapter saved" in x)
    examples = summary["headline"]["evaluated_on"]["examples"]
    assert line.startswith("fedvlm: federated validation accuracy")
    assert f"validation splits, {examples} examples)" in line
    assert "worst site" in line
    for name, text in {**_texts(tmp_path / "real"), "console": out}.items():
        assert "synthetic" not in text.lower(), name
        assert "held-out accuracy" not in text.lower(), name


def test_heldout_path_is_what_the_coordinator_evaluates_and_names(tmp_path, folders, capsys):
    sites_dir, heldout = folders
    rows, config = _run(tmp_path, sites_dir, **{"heldout-path": str(heldout)})
    out = capsys.readouterr().out

    held = [e for _, e in read_imagefolder(heldout, require_splits=False)]
    assert rows[0]["evaluated_on"] == {
        "kind": "folder",
        "path": str(heldout.resolve()),
        "examples": len(held),
    }
    # Round 0's figure is the initial adapter's accuracy on HELD, recomputed here.
    run = RunSettings.from_config(config)
    model, processor = load_peft_model(run.base_model, run.lora)
    set_adapter_state(model, initial_adapter(run.base_model, run.lora))
    assert rows[0]["heldout_accuracy"] == pytest.approx(evaluate(model, processor, held).accuracy)
    assert all(0.0 <= r["heldout_accuracy"] <= 1.0 for r in rows)
    line = next(x for x in out.splitlines() if "adapter saved" in x)
    assert f"held-out accuracy on {heldout.resolve()} ({len(held)} examples)" in line
    texts = _texts(tmp_path / "real")
    assert str(heldout.resolve()) in texts["card"] and str(heldout.resolve()) in texts["html"]
    assert "synthetic" not in texts["card"].lower()


def test_the_deployed_coordinator_marks_sites_as_real_and_resolves_heldout_path(
    tmp_path, folders, monkeypatch
):
    """`fedvlm coordinator`: deployed sites hold their own images, never the synthetic task."""
    heldout = Path(shutil.copytree(folders[1], tmp_path / "heldout"))  # spoiled below
    started = {}

    def fake_run(options):  # stands in for the SuperLink + flwr run, which test_deploy runs
        started["run_config"] = options.run_config
        return tmp_path

    monkeypatch.setattr("coordinator.launch.run_coordinator", fake_run)
    monkeypatch.chdir(tmp_path)
    args = ["coordinator", "--insecure", "--state-dir", str(tmp_path / "state")]
    assert main([*args, "--run-config", 'heldout-path="heldout"']) == 0
    assert started["run_config"]["site-data"] == "folders"
    assert started["run_config"]["heldout-path"] == str(heldout.resolve())

    (heldout / "metadata.jsonl").write_text("not json\n")
    assert main([*args, "--run-config", 'heldout-path="heldout"']) == 2  # refused before start
