"""Scenarios: small TOML files that say how many sites, how skewed, how many rounds.

A scenario has two tables, `[federation]` (Flower's simulation config, as given to
`flwr run --federation-config`: `num-supernodes`, `client-resources-num-cpus`...) and
`[run-config]` (overrides of
`[tool.flwr.app.config]` in pyproject.toml), and optionally `[data]`: real images for the
simulated sites (site folders, or one dataset and a Flower Datasets partitioner;
simulations/real_data.py). The run-config keys are checked against
pyproject here, so a typo fails with the file and key named instead of deep inside Flower.
"""

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.proto.federation_config_pb2 import SimulationConfig

from fedvlm.errors import ConfigError

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def app_config_keys() -> set[str]:
    """The run-config keys the app declares in pyproject's `[tool.flwr.app.config]`."""
    with PYPROJECT.open("rb") as f:
        return set(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def federation_keys() -> set[str]:
    """The keys Flower's `--federation-config` accepts (its SimulationConfig fields)."""
    return {f.name.replace("_", "-") for f in SimulationConfig.DESCRIPTOR.fields}


@dataclass(frozen=True)
class Scenario:
    """A named simulated federation: Flower options plus run-config overrides."""

    name: str
    federation: dict[str, Any] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def num_sites(self) -> int:
        """Number of simulated SuperNodes (sites)."""
        return int(self.federation["num-supernodes"])

    @classmethod
    def load(cls, name_or_path: str) -> "Scenario":
        """Load `simulations/scenarios/<name>.toml` or a path to a scenario file."""
        path = Path(name_or_path)
        if not path.suffix:
            path = SCENARIO_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
            raise ConfigError("scenario", f"no scenario file {path} (built-in: {known})")
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("scenario", f"{path}: {exc}") from exc
        federation = data.get("federation", {})
        run_config = data.get("run-config", {})
        if not isinstance(federation.get("num-supernodes"), int):
            raise ConfigError(
                "federation.num-supernodes", f"{path}: an integer number of sites is required"
            )
        unknown_fed = sorted(set(federation) - federation_keys())
        if unknown_fed:
            raise ConfigError(
                f"federation.{unknown_fed[0]}",
                f"{path}: not a Flower simulation setting "
                f"(valid: {', '.join(sorted(federation_keys()))})",
            )
        unknown = sorted(set(run_config) - app_config_keys())
        if unknown:
            raise ConfigError(
                f"run-config.{unknown[0]}",
                f"{path}: not a key of [tool.flwr.app.config] in pyproject.toml",
            )
        return cls(
            name=path.stem,
            federation=federation,
            run_config=run_config,
            data=data.get("data", {}),
        )
