"""Typed settings, parsed once at the edge from Flower's `run_config` and `node_config`.

Flower hands both sides flat dictionaries of TOML scalars. They are turned into frozen
dataclasses here, once, and every problem is reported with the key at fault, so a typo in
`pyproject.toml` or on the `--run-config` flag fails before any training starts. Each key is
declared once (`fedvlm.settings_registry.setting`): its default fills the dataclass field.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvlm.errors import ConfigError
from fedvlm.lora import LoraSettings
from fedvlm.settings_registry import Scope, setting


def _positive(value: float) -> bool:
    return value > 0


SITE_DATA = ("synthetic", "folders", "partitioned")
PARTITIONERS = ("iid", "dirichlet", "pathological", "natural-id")

# The training run (RunSettings).
NUM_ROUNDS = setting("num-server-rounds", int, 5, "Training rounds.", check=_positive, expect="> 0")
LOCAL_STEPS = setting(
    "local-steps", int, 16, "Optimiser steps per site per round.", check=_positive, expect="> 0"
)
LEARNING_RATE = setting(
    "learning-rate", float, 0.003, "Sites' AdamW learning rate.", check=_positive, expect="> 0"
)
BATCH_SIZE = setting(
    "batch-size",
    int,
    8,
    "Examples per local step (the expected size under DP's Poisson sampling).",
    check=_positive,
    expect="> 0",
)
FRACTION_TRAIN = setting(
    "fraction-train",
    float,
    1.0,
    "Share of connected sites sampled to train each round.",
    check=lambda v: 0.0 < v <= 1.0,
    expect="in (0, 1]",
)
FRACTION_EVALUATE = setting(
    "fraction-evaluate",
    float,
    1.0,
    "Share of the round's trained sites asked to evaluate (many simulated sites: fewer).",
    check=lambda v: 0.0 <= v <= 1.0,
    expect="in [0, 1]",
)
MIN_TRAIN_NODES = setting(
    "min-train-nodes",
    int,
    2,
    "Fewest replies a round needs, else it fails on record.",
    check=_positive,
    expect=">= 1",
)
MIN_AVAILABLE_NODES = setting(
    "min-available-nodes",
    int,
    2,
    "Sites that must be connected before a round starts.",
    check=_positive,
    expect=">= 1",
)
ROUND_TIMEOUT = setting(
    "round-timeout",
    float,
    600.0,
    "Seconds the coordinator waits for a round's replies.",
    check=_positive,
    expect="> 0 seconds",
)
NODE_WAIT_TIMEOUT = setting(
    "node-wait-timeout",
    float,
    120.0,
    "Seconds to wait for min-available-nodes to connect before the run stops (resumable).",
    check=_positive,
    expect="> 0",
)
BASE_MODEL = setting(
    "base-model",
    str,
    "embedded",
    "The VLM: `embedded` (the built-in tiny one), a `save_pretrained` folder or a hub id.",
    check=bool,
    expect="a model folder or hub id",
)
STRATEGY = setting(
    "strategy",
    str,
    "fedavg",
    "Aggregation strategy (`strategies/`).",
    check=bool,
    expect="a strategy name",
)
SEED = setting("seed", int, 0, "Seed of sampling, initialisation and local batches.")
RUN_DIR = setting(
    "run-dir",
    str,
    "runs",
    "Folder under which each run gets its own folder.",
    check=bool,
    expect="a folder path",
)
RUN_NAME = setting("run-name", str, "", "The run folder's name; empty: scenario and time.")
RESUME = setting(
    "resume", str, "", "A run folder (or its name under run-dir) to continue after a crash."
)
HELDOUT_PATH = setting(
    "heldout-path",
    str,
    "",
    "Held-out imagefolder the coordinator evaluates on; empty: the synthetic set for synthetic "
    "sites, else the sites' validation accuracy is the headline.",
)
# The adapter (LoraSettings).
LORA_RANK = setting(
    "lora-rank",
    int,
    8,
    "LoRA rank of the global adapter (a site may declare a smaller one).",
    scope=Scope.BOTH,
    check=_positive,
    expect="> 0",
)
LORA_ALPHA = setting("lora-alpha", int, 16, "LoRA scaling alpha.", check=_positive, expect="> 0")
LORA_DROPOUT = setting(
    "lora-dropout",
    float,
    0.0,
    "Dropout on the LoRA path.",
    check=lambda v: 0.0 <= v < 1.0,
    expect="in [0, 1)",
)
TRAIN_PROJECTOR = setting(
    "train-projector", bool, True, "Train the vision-to-text projector with the adapter."
)
LORA_VISION = setting("lora-vision", bool, False, "Put LoRA on the vision tower too.")
# What simulated sites hold (SimulationSettings).
SIM_SITE_DATA = setting(
    "site-data",
    str,
    "synthetic",
    "What sites hold: the synthetic task, their own image folders, or partitions of one dataset.",
    check=SITE_DATA.__contains__,
    expect=" or ".join(SITE_DATA),
)
SIM_SITES = setting("sim-sites", str, "", "Folder of site folders (`fedvlm simulate --sites`).")
SIM_DATASET = setting(
    "sim-dataset", str, "", "Dataset split into sites (`fedvlm simulate --dataset`)."
)
SIM_PARTITIONER = setting(
    "sim-partitioner",
    str,
    "iid",
    "Flower Datasets partitioner of sim-dataset.",
    check=PARTITIONERS.__contains__,
    expect=" or ".join(PARTITIONERS),
)
SIM_PARTITION_BY = setting(
    "sim-partition-by",
    str,
    "answer",
    "Column the partitioner splits on.",
    check=bool,
    expect="a column",
)
SIM_CLASSES_PER_SITE = setting(
    "sim-classes-per-site",
    int,
    2,
    "Values of sim-partition-by per site (pathological).",
    check=_positive,
    expect="> 0",
)
SIM_EXAMPLES = setting(
    "sim-examples-per-site",
    int,
    96,
    "Synthetic training examples per site.",
    check=_positive,
    expect="> 0",
)
SIM_VAL_EXAMPLES = setting(
    "sim-val-examples-per-site",
    int,
    48,
    "Synthetic validation examples per site.",
    check=_positive,
    expect="> 0",
)
SIM_LABEL_ALPHA = setting(
    "sim-label-alpha",
    float,
    0.5,
    "Dirichlet concentration of the label skew across sites.",
    check=_positive,
    expect="> 0",
)
SIM_ACQUISITION_SKEW = setting(
    "sim-acquisition-skew",
    float,
    0.5,
    "How much the synthetic sites' scanners differ.",
    check=lambda v: 0.0 <= v <= 1.0,
    expect="between 0 and 1",
)
HELDOUT_EXAMPLES = setting(
    "heldout-examples",
    int,
    240,
    "Size of the synthetic held-out set.",
    check=_positive,
    expect="> 0",
)
# Where a node finds its data (NodeSettings); partition-id / num-partitions are Flower's.
DATA_PATH = setting(
    "data-path",
    str,
    "",
    "The site's imagefolder (`metadata.jsonl`); set by `fedvlm node --data`.",
    scope=Scope.NODE,
)
NUM_PARTITIONS = setting(
    "num-partitions",
    int,
    1,
    "Set by Flower's simulation engine: number of simulated sites.",
    scope=Scope.NODE,
    check=_positive,
    expect="> 0",
)
PARTITION_ID = setting(
    "partition-id",
    int,
    0,
    "Set by Flower's simulation engine: this simulated site's index.",
    scope=Scope.NODE,
    check=lambda v: v >= 0,
    expect="in [0, num-partitions)",
)


@dataclass(frozen=True)
class SimulationSettings:
    """What simulated sites hold: the embedded synthetic task, or real images.

    `site_data` is also how the coordinator knows whether a synthetic held-out set means
    anything: only when the sites draw the synthetic task ("synthetic"). "folders": every
    site reads an imagefolder (a deployed node its own `data-path`; a simulated one the
    `partition-id`-th site folder under `sites_dir`); "partitioned": simulated sites are
    Flower Datasets partitions of the one dataset at `dataset`.
    """

    examples_per_site: int = SIM_EXAMPLES.default
    val_examples_per_site: int = SIM_VAL_EXAMPLES.default
    label_alpha: float = SIM_LABEL_ALPHA.default
    acquisition_skew: float = SIM_ACQUISITION_SKEW.default
    heldout_examples: int = HELDOUT_EXAMPLES.default
    site_data: str = SIM_SITE_DATA.default
    sites_dir: str = SIM_SITES.default
    dataset: str = SIM_DATASET.default
    partitioner: str = SIM_PARTITIONER.default
    partition_by: str = SIM_PARTITION_BY.default
    classes_per_site: int = SIM_CLASSES_PER_SITE.default

    @property
    def synthetic(self) -> bool:
        """Whether the sites draw the synthetic radiograph task."""
        return self.site_data == "synthetic"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SimulationSettings":
        """Parse the `sim-*`, `site-data` and `heldout-examples` keys of the run config."""
        site_data = SIM_SITE_DATA.read(config)
        dataset = SIM_DATASET.read(config)
        if site_data == "partitioned" and not dataset:
            raise ConfigError("sim-dataset", 'site-data = "partitioned" needs a dataset path')
        return cls(
            site_data=site_data,
            sites_dir=SIM_SITES.read(config),
            dataset=dataset,
            partitioner=SIM_PARTITIONER.read(config),
            partition_by=SIM_PARTITION_BY.read(config),
            classes_per_site=SIM_CLASSES_PER_SITE.read(config),
            examples_per_site=SIM_EXAMPLES.read(config),
            val_examples_per_site=SIM_VAL_EXAMPLES.read(config),
            label_alpha=SIM_LABEL_ALPHA.read(config),
            acquisition_skew=SIM_ACQUISITION_SKEW.read(config),
            heldout_examples=HELDOUT_EXAMPLES.read(config),
        )


@dataclass(frozen=True)
class RunSettings:
    """Coordinator-wide settings of one federation (Flower's `run_config`)."""

    num_rounds: int = NUM_ROUNDS.default
    local_steps: int = LOCAL_STEPS.default
    learning_rate: float = LEARNING_RATE.default
    batch_size: int = BATCH_SIZE.default
    fraction_train: float = FRACTION_TRAIN.default
    fraction_evaluate: float = FRACTION_EVALUATE.default
    min_train_nodes: int = MIN_TRAIN_NODES.default
    min_available_nodes: int = MIN_AVAILABLE_NODES.default
    round_timeout: float = ROUND_TIMEOUT.default
    node_wait_timeout: float = NODE_WAIT_TIMEOUT.default
    base_model: str = BASE_MODEL.default
    lora: LoraSettings = LoraSettings(
        rank=LORA_RANK.default,
        alpha=LORA_ALPHA.default,
        dropout=LORA_DROPOUT.default,
        train_projector=TRAIN_PROJECTOR.default,
        vision=LORA_VISION.default,
    )
    strategy: str = STRATEGY.default
    seed: int = SEED.default
    run_dir: str = RUN_DIR.default
    run_name: str = RUN_NAME.default
    simulation: SimulationSettings = SimulationSettings()
    heldout_path: str = HELDOUT_PATH.default

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RunSettings":
        """Parse and validate a Flower `run_config`; raises ConfigError naming the key."""
        lora = LoraSettings(
            rank=LORA_RANK.read(config),
            alpha=LORA_ALPHA.read(config),
            dropout=LORA_DROPOUT.read(config),
            train_projector=TRAIN_PROJECTOR.read(config),
            vision=LORA_VISION.read(config),
        )
        return cls(
            num_rounds=NUM_ROUNDS.read(config),
            local_steps=LOCAL_STEPS.read(config),
            learning_rate=LEARNING_RATE.read(config),
            batch_size=BATCH_SIZE.read(config),
            fraction_train=FRACTION_TRAIN.read(config),
            fraction_evaluate=FRACTION_EVALUATE.read(config),
            min_train_nodes=MIN_TRAIN_NODES.read(config),
            min_available_nodes=MIN_AVAILABLE_NODES.read(config),
            round_timeout=ROUND_TIMEOUT.read(config),
            node_wait_timeout=NODE_WAIT_TIMEOUT.read(config),
            base_model=BASE_MODEL.read(config),
            lora=lora,
            strategy=STRATEGY.read(config),
            seed=SEED.read(config),
            run_dir=RUN_DIR.read(config),
            run_name=RUN_NAME.read(config),
            simulation=SimulationSettings.from_config(config),
            heldout_path=HELDOUT_PATH.read(config),
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
        data_path = DATA_PATH.read(config)
        if data_path:
            return cls(data_path=Path(data_path).expanduser())
        if "partition-id" not in config or "num-partitions" not in config:
            raise ConfigError(
                "data-path",
                "this node has no data: start it with --node-config 'data-path=\"/site/images\"'"
                " (or run it in simulation, where Flower sets partition-id)",
            )
        num_partitions = NUM_PARTITIONS.read(config)
        partition_id = PARTITION_ID.read(config)
        if partition_id >= num_partitions:
            raise ConfigError(
                "partition-id",
                f"{partition_id!r} is out of range: expected in [0, {num_partitions})",
            )
        return cls(partition_id=partition_id, num_partitions=num_partitions)
