"""Experiment tracking: a simulated run mirrors every ledger figure into TensorBoard and MLflow.

The coordinator's real ServerApp main and the real ClientApp run over
`simulations.in_process.InProcessGrid`; the event file and the MLflow file store are then
read back with their own readers and compared with `ledger.jsonl`, figure by figure.
"""

import os

import pytest

from client import app as client_app
from coordinator.ledger import read_ledger
from coordinator.tracking import MLFLOW_DIR, TENSORBOARD_DIR, TrackingSettings, ledger_figures
from fedvlm.errors import ConfigError
from simulations.in_process import InProcessGrid, run_coordinator

RUN_CONFIG = {
    "num-server-rounds": 2,
    "local-steps": 1,
    "batch-size": 4,
    "sim-examples-per-site": 8,
    "sim-val-examples-per-site": 4,
    "heldout-examples": 8,
    "min-train-nodes": 2,
    "min-available-nodes": 2,
    "node-wait-timeout": 5.0,
    "energy-tracking": False,
    "run-name": "tracked",
    "tracking": "tensorboard,mlflow",
}


def _expected(ledger: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Per figure name, the (round, value) series the ledger holds."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in ledger:
        for name, value in ledger_figures(row):
            series.setdefault(name, []).append((row["round"], value))
    return series


def test_a_tracked_run_leaves_events_and_an_mlflow_run_equal_to_the_ledger(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = {**RUN_CONFIG, "run-dir": str(tmp_path)}
    run_coordinator(InProcessGrid(client_app.app, config, [{}, {}], [11, 22]), config)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    expected = _expected(read_ledger(run_dir))
    assert "fed_eval_accuracy" in expected and "heldout_accuracy" in expected
    assert any(name.startswith("site_eval/sites/11/") for name in expected)
    assert len(expected["heldout_accuracy"]) == 3  # rounds 0, 1, 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(expected)
    for name, points in expected.items():
        logged = [(e.step, e.value) for e in events.Scalars(name)]
        assert logged == [(step, pytest.approx(value, rel=1e-6)) for step, value in points]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / MLFLOW_DIR).resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("fedvlm").experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert set(run.data.metrics) == set(expected)
    for name, points in expected.items():
        logged = client.get_metric_history(run.info.run_id, name)
        history = sorted((m.step, m.value) for m in logged)
        assert history == points  # float64 both sides: exactly the ledger's values
    assert not os.environ.get("MLFLOW_TRACKING_URI")  # nothing pointed it elsewhere


def test_tracking_is_off_by_default_and_unknown_sinks_are_refused():
    assert TrackingSettings.from_config({}).sinks == ()
    assert TrackingSettings.from_config({"tracking": "mlflow, tensorboard"}).sinks == (
        "mlflow",
        "tensorboard",
    )
    with pytest.raises(ConfigError, match="tracking"):
        TrackingSettings.from_config({"tracking": "wandb"})
