"""Optional experiment tracking: every ledger figure of every round, in TensorBoard and MLflow.

Flower and Hugging Face users follow runs in TensorBoard or MLflow; the ledger
(`ledger.jsonl`) stays the record, and each of its rows is mirrored as it is written, with
the round as the step. One run-config key chooses the sinks:

- ``tracking = "none"`` (default), ``"tensorboard"``, ``"mlflow"`` or ``"tensorboard,mlflow"``;
- ``tracking-uri``: where MLflow logs; empty means a local file store in the run folder
  (``mlruns/``), so nothing leaves the machine unless a URI says so. TensorBoard event files
  always go to the run folder's ``tensorboard/``.

MLflow's own usage telemetry is switched off before it is imported, for the same reason.
Browse with ``tensorboard --logdir runs/<id>/tensorboard`` or ``mlflow ui --backend-store-uri
runs/<id>/mlruns``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvlm.errors import ConfigError
from fedvlm.settings_registry import setting

SINKS = ("tensorboard", "mlflow")
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
EXPERIMENT = "fedvlm"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")  # MLflow's metric-name alphabet


TRACKING = setting(
    "tracking",
    str,
    "none",
    'Sinks that mirror every ledger figure per round: "none", "tensorboard", "mlflow" or both '
    "comma-separated.",
)
TRACKING_URI = setting(
    "tracking-uri",
    str,
    "",
    "MLflow tracking URI; empty: a file store in the run folder (nothing leaves the machine).",
)


@dataclass(frozen=True)
class TrackingSettings:
    """Which sinks mirror the ledger, and MLflow's tracking URI ("" = local file store)."""

    sinks: tuple[str, ...] = ()
    uri: str = ""

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> TrackingSettings:
        """Read ``tracking`` (comma-separated sinks, or "none") and ``tracking-uri``."""
        text = TRACKING.read(config).strip().lower()
        sinks = () if text in ("", "none") else tuple(s.strip() for s in text.split(","))
        unknown = [s for s in sinks if s not in SINKS]
        if unknown:
            raise ConfigError(
                "tracking", f"unknown sink(s) {unknown}; use none or any of {', '.join(SINKS)}"
            )
        return cls(sinks=tuple(dict.fromkeys(sinks)), uri=TRACKING_URI.read(config))


def ledger_figures(row: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every finite number of a ledger row, named by its path (``energy/total/kwh``).

    Lists (the sites that took part, rejections) and text are no figures; the round is the
    step, not a figure. Characters MLflow refuses in a name become ``_``.
    """
    for key, value in row.items():
        name = _UNSAFE.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            yield from ledger_figures(value, name + "/")
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and name != "round"
        ):
            yield name, float(value)


class Tracker:
    """Mirrors ledger rows into the chosen sinks; a no-op without any."""

    def __init__(self, settings: TrackingSettings, run_dir: Path, run_name: str) -> None:
        self._writer = None
        self._mlflow = None
        if "tensorboard" in settings.sinks:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=str(run_dir / TENSORBOARD_DIR))
        if "mlflow" in settings.sinks:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            # The local default is MLflow's file store (in maintenance mode, still read by
            # `mlflow ui`): its database stores need SQLAlchemy and a migration tool besides.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow import MlflowClient

            uri = settings.uri or (run_dir / MLFLOW_DIR).resolve().as_uri()
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(EXPERIMENT)
            experiment = found.experiment_id if found else client.create_experiment(EXPERIMENT)
            run = client.create_run(experiment, run_name=run_name)
            self._mlflow = (client, run.info.run_id)

    def log_round(self, row: Mapping[str, Any]) -> None:
        """Log each figure of ``row`` at step ``row["round"]``."""
        step = int(row["round"])
        figures = list(ledger_figures(row))
        if self._writer is not None:
            for name, value in figures:
                self._writer.add_scalar(name, value, global_step=step)
            self._writer.flush()
        if self._mlflow is not None and figures:
            from mlflow.entities import Metric

            client, run_id = self._mlflow
            metrics = [Metric(name, value, 0, step) for name, value in figures]
            for start in range(0, len(metrics), 1000):  # MLflow's batch limit
                client.log_batch(run_id, metrics=metrics[start : start + 1000])

    def close(self) -> None:
        """Flush and close the event file; mark the MLflow run finished."""
        if self._writer is not None:
            self._writer.close()
        if self._mlflow is not None:
            client, run_id = self._mlflow
            client.set_terminated(run_id)
