"""Typed settings, parsed once at the edge from Flower's `run_config` and `node_config`.

Flower hands both sides flat dictionaries of TOML scalars. They are turned into frozen
dataclasses here, once, and every problem is reported with the key at fault, so a typo in
`pyproject.toml` or on the `--run-config` flag fails before any training starts.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fedvlm.errors import ConfigError
from fedvlm.lora import LoraSettings

T = TypeVar("T")

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def read(
    config: Mapping[str, Any],
    key: str,
    kind: type[T],
    default: T,
    check: Callable[[T], bool] | None = None,
    expect: str = "",
) -> T:
    """Read one typed value, falling back to `default` when the key is absent.

    Integers are accepted where a number is expected (TOML writes `1` for `1.0`), but never
    booleans where numbers are expected: `True` silently meaning `1` hides mistakes.
    """
    if key not in config:
        return default
    value = config[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(key, f"expected {_TYPE_NAMES[kind]}, got {value!r}")
    if check is not None and not check(value):
        raise ConfigError(key, f"{value!r} is out of range: expected {expect}")
    return value


def _positive(value: float) -> bool:
    return value > 0


SITE_DATA = ("synthetic", "folders", "partitioned")
PARTITIONERS = ("iid", "dirichlet", "pathological", "natural-id")


@dataclass(frozen=True)
class SimulationSettings:
    """What simulated sites hold: the embedded synthetic task, or real images.

    `site_data` is also how the coordinator knows whether a synthetic held-out set means
    anything: only when the sites draw the synthetic task ("synthetic"). "folders": every
    site reads an imagefolder (a deployed node its own `data-path`; a simulated one the
    `partition-id`-th site folder under `sites_dir`); "partitioned": simulated sites are
    Flower Datasets partitions of the one dataset at `dataset`.
    """

    examples_per_site: int = 96
    val_examples_per_site: int = 48
    label_alpha: float = 0.5
    acquisition_skew: float = 0.5
    heldout_examples: int = 240
    site_data: str = "synthetic"
    sites_dir: str = ""
    dataset: str = ""
    partitioner: str = "iid"
    partition_by: str = "answer"
    classes_per_site: int = 2

    @property
    def synthetic(self) -> bool:
        """Whether the sites draw the synthetic radiograph task."""
        return self.site_data == "synthetic"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SimulationSettings":
        """Parse the `sim-*`, `site-data` and `heldout-examples` keys of the run config."""
        d = cls()
        site_data = read(
            config, "site-data", str, d.site_data, SITE_DATA.__contains__, " or ".join(SITE_DATA)
        )
        sites_dir = read(config, "sim-sites", str, d.sites_dir)
        dataset = read(config, "sim-dataset", str, d.dataset)
        if site_data == "partitioned" and not dataset:
            raise ConfigError("sim-dataset", 'site-data = "partitioned" needs a dataset path')
        return cls(
            site_data=site_data,
            sites_dir=sites_dir,
            dataset=dataset,
            partitioner=read(
                config,
                "sim-partitioner",
                str,
                d.partitioner,
                PARTITIONERS.__contains__,
                " or ".join(PARTITIONERS),
            ),
            partition_by=read(config, "sim-partition-by", str, d.partition_by, bool, "a column"),
            classes_per_site=read(
                config, "sim-classes-per-site", int, d.classes_per_site, _positive, "> 0"
            ),
            examples_per_site=read(
                config, "sim-examples-per-site", int, d.examples_per_site, _positive, "> 0"
            ),
            val_examples_per_site=read(
                config,
                "sim-val-examples-per-site",
                int,
                d.val_examples_per_site,
                _positive,
                "> 0",
            ),
            label_alpha=read(config, "sim-label-alpha", float, d.label_alpha, _positive, "> 0"),
            acquisition_skew=read(
                config,
                "sim-acquisition-skew",
                float,
                d.acquisition_skew,
                lambda v: 0.0 <= v <= 1.0,
                "between 0 and 1",
            ),
            heldout_examples=read(
                config, "heldout-examples", int, d.heldout_examples, _positive, "> 0"
            ),
        )


@dataclass(frozen=True)
class RunSettings:
    """Coordinator-wide settings of one federation (Flower's `run_config`)."""

    num_rounds: int = 5
    local_steps: int = 16
    learning_rate: float = 3e-3
    batch_size: int = 8
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    round_timeout: float = 600.0
    base_model: str = "embedded"
    lora: LoraSettings = LoraSettings()
    strategy: str = "fedavg"
    seed: int = 0
    run_dir: str = "runs"
    run_name: str = ""
    simulation: SimulationSettings = SimulationSettings()
    heldout_path: str = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RunSettings":
        """Parse and validate a Flower `run_config`; raises ConfigError naming the key."""
        d = cls()
        lora = LoraSettings(
            rank=read(config, "lora-rank", int, d.lora.rank, _positive, "> 0"),
            alpha=read(config, "lora-alpha", int, d.lora.alpha, _positive, "> 0"),
            dropout=read(
                config,
                "lora-dropout",
                float,
                d.lora.dropout,
                lambda v: 0.0 <= v < 1.0,
                "in [0, 1)",
            ),
            train_projector=read(config, "train-projector", bool, d.lora.train_projector),
            vision=read(config, "lora-vision", bool, d.lora.vision),
        )
        fraction = read(
            config,
            "fraction-train",
            float,
            d.fraction_train,
            lambda v: 0.0 < v <= 1.0,
            "in (0, 1]",
        )
        return cls(
            num_rounds=read(config, "num-server-rounds", int, d.num_rounds, _positive, "> 0"),
            local_steps=read(config, "local-steps", int, d.local_steps, _positive, "> 0"),
            learning_rate=read(config, "learning-rate", float, d.learning_rate, _positive, "> 0"),
            batch_size=read(config, "batch-size", int, d.batch_size, _positive, "> 0"),
            fraction_train=fraction,
            min_train_nodes=read(
                config, "min-train-nodes", int, d.min_train_nodes, _positive, ">= 1"
            ),
            min_available_nodes=read(
                config, "min-available-nodes", int, d.min_available_nodes, _positive, ">= 1"
            ),
            round_timeout=read(
                config, "round-timeout", float, d.round_timeout, _positive, "> 0 seconds"
            ),
            base_model=read(
                config, "base-model", str, d.base_model, bool, "a model folder or hub id"
            ),
            lora=lora,
            strategy=read(config, "strategy", str, d.strategy, bool, "a strategy name"),
            seed=read(config, "seed", int, d.seed),
            run_dir=read(config, "run-dir", str, d.run_dir, bool, "a folder path"),
            run_name=read(config, "run-name", str, d.run_name),
            simulation=SimulationSettings.from_config(config),
            heldout_path=read(config, "heldout-path", str, d.heldout_path),
        )


@dataclass(frozen=True)
class NodeSettings:
    """Where a client node finds its data (Flower's `node_config`).

    A deployed node names its image folder with `data-path`; a simulated one gets Flower's
    `partition-id` / `num-partitions` and draws its site from the synthetic task.
    """

    data_path: Path | None = None
    partition_id: int | None = None
    num_partitions: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "NodeSettings":
        """Parse a Flower `node_config`; raises ConfigError naming the key."""
        data_path = read(config, "data-path", str, "")
        if data_path:
            return cls(data_path=Path(data_path).expanduser())
        if "partition-id" not in config or "num-partitions" not in config:
            raise ConfigError(
                "data-path",
                "this node has no data: start it with --node-config 'data-path=\"/site/images\"'"
                " (or run it in simulation, where Flower sets partition-id)",
            )
        num_partitions = read(config, "num-partitions", int, 1, _positive, "> 0")
        partition_id = read(
            config,
            "partition-id",
            int,
            0,
            lambda v: 0 <= v < num_partitions,
            f"in [0, {num_partitions})",
        )
        return cls(partition_id=partition_id, num_partitions=num_partitions)
