"""Simulate on real images: a scenario's `[data]` table (or `fedvlm simulate` flags) as run config.

Two ways to give simulated sites real data, both checked whole here, before Flower starts,
with the same errors a deployed site's folder gets (``metadata.jsonl:<line>: ...``):

- ``sites = "DIR"``: every immediate subfolder of DIR holding a ``metadata.jsonl`` is one
  site, in name order; ``num-supernodes`` becomes their number.
- ``dataset = "PATH"`` with ``partitioner`` (``iid``, ``dirichlet``, ``pathological``,
  ``natural-id``), ``partition-by`` (a column: ``answer``, ``hospital``...), ``num-sites``,
  ``alpha`` (Dirichlet) and ``classes-per-site`` (pathological): one imagefolder or
  ``save_to_disk`` dataset split by Flower Datasets' partitioners. natural-id makes one site
  per distinct value, so it sets ``num-supernodes`` itself.

The sites then find their share from the run config (``site-data``, ``sim-sites``,
``sim-dataset``...; client/site_data.py), exactly as a run started by plain ``flwr run`` would.
Relative paths are taken from the current directory.
"""

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedvlm.config import SEED, SimulationSettings
from fedvlm.data.imagefolder import validate_imagefolder
from fedvlm.data.real_sites import natural_ids, partitioned_sites, site_folders
from fedvlm.errors import ConfigError
from fedvlm.settings_registry import read
from simulations.scenario import Scenario

# [data] key -> run-config key it sets
DATA_KEYS = {
    "sites": "sim-sites",
    "dataset": "sim-dataset",
    "partitioner": "sim-partitioner",
    "partition-by": "sim-partition-by",
    "alpha": "sim-label-alpha",
    "classes-per-site": "sim-classes-per-site",
    "num-sites": None,  # -> [federation] num-supernodes
}


def _absolute(path: Any, key: str) -> str:
    if not isinstance(path, str) or not path:
        raise ConfigError(f"data.{key}", f"expected a path, got {path!r}")
    return str(Path(path).expanduser().resolve())


def with_data(
    scenario: Scenario, data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> tuple[Scenario, dict[str, Any]]:
    """``scenario`` with simulated sites on the real data ``data`` describes, all checked.

    ``overrides`` are the run-config overrides the run will get (``--run-config``); they
    come back with ``heldout-path`` checked and made absolute (the ServerApp runs in another
    working directory). The partition uses the run's ``seed``.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(data) - set(DATA_KEYS))
    if unknown:
        raise ConfigError(f"data.{unknown[0]}", f"not a data key (valid: {', '.join(DATA_KEYS)})")
    run_config = {**scenario.run_config, **overrides}
    heldout = run_config.get("heldout-path")
    if heldout:  # the coordinator reads it too; fail here, before Flower starts
        overrides["heldout-path"] = _absolute(heldout, "heldout-path")
        validate_imagefolder(overrides["heldout-path"], require_splits=False)
    if not data:
        return scenario, overrides
    if ("sites" in data) == ("dataset" in data):
        raise ConfigError("data", "give exactly one of sites (folders) or dataset (partitioned)")
    federation = dict(scenario.federation)
    extra: dict[str, Any] = {}
    if "sites" in data:
        folders = site_folders(_absolute(data["sites"], "sites"), overrides.get("heldout-path", ""))
        for folder in folders:
            validate_imagefolder(folder)
        extra = {"site-data": "folders", "sim-sites": str(folders[0].parent)}
        federation["num-supernodes"] = len(folders)
    else:
        extra = {"site-data": "partitioned", "sim-dataset": _absolute(data["dataset"], "dataset")}
        keys = [k for k in data if k not in ("dataset", "num-sites")]
        extra.update({DATA_KEYS[k]: data[k] for k in keys})
        sim = SimulationSettings.from_config({**run_config, **extra})
        if sim.partitioner == "natural-id":
            federation["num-supernodes"] = len(natural_ids(sim))
        elif "num-sites" in data:
            federation["num-supernodes"] = read(
                data, "num-sites", int, 0, lambda v: v > 0, "> 0 sites"
            )
        seed = SEED.read(run_config)
        partitioned_sites(sim, int(federation["num-supernodes"]), seed)  # every site non-empty
    run_config = {**scenario.run_config, **extra}
    return replace(scenario, federation=federation, run_config=run_config), overrides
