"""The run report is rebuilt from a ledger alone: plots, summary and a parseable model card."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from energy_helpers import reading
from huggingface_hub import ModelCard
from PIL import Image

from coordinator.energy_block import round_energy
from coordinator.model_card import model_card
from coordinator.report import build_report
from fedvlm.energy.settings import IntensitySource
from fedvlm.errors import DataError

ROUNDS = 3
NODES = ("11", "22", "33")
INTENSITY = {"11": 56.0, "22": 380.0, "33": 20.0}
COUNTRY = {"11": "FRA", "22": "DEU", "33": "SWE"}


def _write_run(run_dir: Path, privacy: bool) -> list[dict]:
    """A synthetic three-site run: round 0 evaluation plus three trained rounds."""
    run_dir.mkdir(parents=True)
    meta = {
        "run_id": run_dir.name,
        "base_model": "embedded",
        "strategy": "fedavg",
        "started": "2026-11-29T10:00:00+0000",
        "ended": "2026-11-29T10:05:00+0000",
        "hardware": "AMD EPYC (2 threads), no GPU, 24 GB RAM",
    }
    (run_dir / "run.json").write_text(json.dumps(meta))
    rows = [{"round": 0, "sites": [], "heldout_accuracy": 0.34, "heldout_loss": 1.2}]
    block = None
    for rnd in range(1, ROUNDS + 1):
        sites = list(NODES) if rnd != 2 else list(NODES[:2])  # site 33 drops in round 2
        nodes = {
            n: reading(1e-5 * rnd * (i + 1), INTENSITY[n], IntensitySource.COUNTRY, COUNTRY[n])
            for i, n in enumerate(sites)
        }
        coordinator = reading(2e-6, 475.0, IntensitySource.FALLBACK)
        block = round_energy(
            nodes, coordinator, {n: 300_000 for n in sites}, 900_000, 0.06, previous=block
        )
        row = {
            "round": rnd,
            "sites": sites,
            "dropped": [] if rnd != 2 else ["33"],
            "rejected": [],
            "train_loss": 1.0 / rnd,
            "fed_eval_accuracy": 0.4 + 0.1 * rnd,
            "heldout_accuracy": 0.35 + 0.15 * rnd,
            "heldout_loss": 1.0 / rnd,
            "seconds": 2.5,
            "bytes_up": 300_000 * len(sites),
            "bytes_down": 900_000,
            "energy": block,
            "site_names": {NODES[1]: "hospital-b"},  # the one site that sent its name
        }
        if privacy:
            row["privacy"] = {
                "unit": "example",
                "epsilon": 1.5 * rnd,
                "delta": 1e-5,
                "noise_multiplier": 1.1,
            }
        rows.append(row)
    (run_dir / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run-a"
    _write_run(path, privacy=True)
    return path


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_plots_are_pngs_with_one_point_per_round(run_dir: Path) -> None:
    report = build_report(run_dir)
    assert set(report["plots"]) == {"accuracy", "epsilon", "energy", "bytes"}
    for entry in report["plots"].values():
        with Image.open(run_dir / entry["path"]) as image:
            assert image.format == "PNG" and image.size[0] > 100
    series = {name: entry["series"] for name, entry in report["plots"].items()}
    assert series["accuracy"]["round"] == [0, 1, 2, 3]
    assert series["accuracy"]["heldout_accuracy"] == pytest.approx([0.34, 0.5, 0.65, 0.8])
    assert series["epsilon"]["example"]["epsilon"] == [1.5, 3.0, 4.5]
    assert series["bytes"]["mb_up"] == pytest.approx([0.9, 0.6, 0.9])
    assert list(series["energy"]["kwh"]) == ["11", "22", "33", "coordinator", "network"]
    # The stacks' tops are the ledger's cumulative totals, round by round.
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    for i, row in enumerate(ledger[1:]):
        top = math.fsum(stack[i] for stack in series["energy"]["gco2e"].values())
        assert top == pytest.approx(row["energy"]["cumulative"]["gco2e"], rel=1e-12)
    assert series["energy"]["kwh"]["33"][1] == series["energy"]["kwh"]["33"][0]  # dropped


def test_model_card_metadata_parses_and_holds_the_ledger_totals(run_dir: Path) -> None:
    text = model_card(run_dir)
    assert (run_dir / "adapter" / "README.md").read_text() == text
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    total_g = ledger[-1]["energy"]["cumulative"]["gco2e"]

    meta = _front_matter(text)
    co2 = meta["co2_eq_emissions"]
    assert co2["emissions"] == pytest.approx(total_g, rel=1e-12)
    assert co2["training_type"] == "fine-tuning"
    assert "site 11: country FRA" in co2["geographical_location"]
    # Sites by the name they registered under, node id second (energy table, locations).
    assert f"site hospital-b (node {NODES[1]}): country" in co2["geographical_location"]
    assert f"| site hospital-b (node {NODES[1]}) |" in text
    assert co2["hardware_used"].startswith("AMD EPYC")
    assert Path(meta["base_model"], "config.json").is_file()  # the embedded base's folder
    assert meta["library_name"] == "peft"
    assert {"federated-learning", "lora", "differential-privacy"} <= set(meta["tags"])

    card = ModelCard(text)
    assert card.data.co2_eq_emissions["emissions"] == pytest.approx(total_g, rel=1e-12)
    assert card.data.eval_results[0].metric_value == pytest.approx(0.8)
    assert "ε = 4.5, δ = 1e-05" in card.text
    # What the guarantee covers, what it does not, and no train-loss column under DP.
    assert "any sequence of adapter updates the sites released" in card.text
    assert "Not covered by this guarantee" in card.text and "(suppressed)" in card.text
    assert "train loss" not in card.text
    assert "3 sites" in card.text and "Rounds: 3" in card.text and "fedavg" in card.text
    assert "TDP estimate (estimate)" in card.text and "constant (10.0 W) (estimate)" in card.text
    assert "world average" in card.text  # the coordinator's fallback is flagged


def test_secure_aggregation_section_lists_what_the_coordinator_saw_in_the_clear(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run-s"
    rows = _write_run(run_dir, privacy=False)
    block = {
        "num_clients": 3,
        "degree": 2,
        "threshold": 2,
        "corrupt": 0,
        "corrupt_fraction": 0.0,
        "dropouts": 1,
        "dropout_fraction": 0.25,
        "colluders_needed": 2,
        "privacy_failure": 0.0,
        "correctness_failure": 1e-13,
        "sigma": 40,
        "eta": 30,
        "federation_size": 12,
    }
    for row in rows[1:]:
        row["secagg"] = block
    (run_dir / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = ModelCard(model_card(run_dir)).text
    assert "## Secure aggregation" in text and "k = 2, t = 2" in text
    assert "(γ = 0.0 of a federation of 12 sites)" in text
    clear = text.split("What the coordinator saw in the clear, per site.")[1].split("\n")[0]
    for scalar in (
        "number of training examples",
        "train loss",
        "train seconds",
        "bytes sent",
        "peak GPU memory",
        "energy",
        "DP metrics",
        "evaluation accuracy overall, per question type and per subgroup",
    ):
        assert scalar in clear, scalar
    assert "certified by the federation's CA" in text


def test_report_rebuilds_the_same_from_the_ledger(run_dir: Path) -> None:
    first = build_report(run_dir)
    card = (run_dir / "adapter" / "README.md").read_bytes()
    pngs = {name: (run_dir / e["path"]).read_bytes() for name, e in first["plots"].items()}
    for path in [run_dir / "plots", run_dir / "adapter", run_dir / "report.json"]:
        subprocess.run(["rm", "-rf", str(path)], check=True)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fedvlm"), "report", str(run_dir)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / "adapter" / "README.md").read_bytes() == card
    for name, data in pngs.items():
        assert (run_dir / first["plots"][name]["path"]).read_bytes() == data
    assert json.loads((run_dir / "report.json").read_text())["summary"] == json.loads(
        json.dumps(first["summary"])
    )


def test_run_without_privacy_says_so_and_draws_no_epsilon(tmp_path: Path) -> None:
    run_dir = tmp_path / "plain"
    _write_run(run_dir, privacy=False)
    report = build_report(run_dir)
    assert "epsilon" not in report["plots"]
    text = (run_dir / "adapter" / "README.md").read_text()
    assert "without differential privacy" in text
    assert "| train loss |" in text and "Not covered by this guarantee" not in text
    assert "differential-privacy" not in _front_matter(text)["tags"]


def test_minimal_ledger_without_optional_blocks(tmp_path: Path) -> None:
    (tmp_path / "ledger.jsonl").write_text('{"round": 0, "heldout_accuracy": 0.3}\n')
    report = build_report(tmp_path)
    assert report["summary"]["energy"]["gco2e"] == 0.0
    assert _front_matter(model_card(tmp_path))["co2_eq_emissions"]["emissions"] == 0.0


def test_broken_ledger_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "ledger.jsonl").write_text('{"round": 0}\n{"round": 1,\n')
    with pytest.raises(DataError, match=r"ledger.jsonl:2"):
        build_report(tmp_path)
    with pytest.raises(DataError, match="no ledger"):
        build_report(tmp_path / "missing")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"round": 1, "heldout_acc": 0.5}', "unknown ledger field(s) heldout_acc"),
        ('{"round": 1, "heldout_accuracy": "0.5"}', "'heldout_accuracy': expected a number"),
        ('{"round": 1, "bytes_up": true}', "'bytes_up': expected an integer"),
    ],
)
def test_a_row_outside_the_ledger_schema_is_named_by_line_and_field(
    tmp_path: Path, line: str, message: str
) -> None:
    """Readers parse every row through `LedgerRow`: a renamed field or a wrong type fails at
    its line instead of silently dropping a figure from the report (without the schema check
    in `read_rows`, the renamed accuracy would just be missing from the card)."""
    (tmp_path / "ledger.jsonl").write_text('{"round": 0, "heldout_accuracy": 0.3}\n' + line + "\n")
    with pytest.raises(DataError, match=r"ledger.jsonl:2: ") as error:
        build_report(tmp_path)
    assert message in str(error.value)
