"""Simulated sites over real images: one folder per site, or one dataset split into sites.

Both read their images through the same checks as a deployed site's folder
(`fedvlm.data.imagefolder`), so a simulation refuses exactly what a deployment would, with
the same ``metadata.jsonl:<line>: ...`` errors.

Splitting one dataset into sites is Flower Datasets' job (``flwr-datasets``): its
partitioners get a local ``datasets.Dataset`` of the examples' text columns plus their
position (``partitioner.dataset = ...``; nothing is downloaded), and each partition's
``index`` column maps back to the decoded images, which never enter Arrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import datasets
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
    PathologicalPartitioner,
)
from PIL import Image

from fedvlm.config import SimulationSettings
from fedvlm.data.example import VQAExample
from fedvlm.data.imagefolder import (
    METADATA,
    REQUIRED_SPLITS,
    RESERVED_FIELDS,
    SPLIT_ALIASES,
    SPLITS,
    canonical_split,
    hash_split,
    read_imagefolder,
    split_examples,
)
from fedvlm.data.site import SiteData
from fedvlm.errors import ConfigError, DataError

Rows = tuple[tuple[str, VQAExample], ...]
INDEX = "index"  # the table column that maps a partition back to its examples
# DirichletPartitioner redraws until every partition holds this many examples (its own
# default is 10, too many for a small dataset split many ways).
MIN_PARTITION_SIZE = 10


def site_folders(sites_dir: str | Path, exclude: str | Path = "") -> list[Path]:
    """Every immediate subfolder of ``sites_dir`` holding a ``metadata.jsonl``, by name.

    ``exclude`` is the run's held-out folder: kept beside the sites, it must never train.
    """
    root = Path(sites_dir).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: sites folder does not exist")
    held = Path(exclude).expanduser().resolve() if exclude else None
    folders = sorted(
        p for p in root.iterdir() if p.is_dir() and (p / METADATA).is_file() and p != held
    )
    if not folders:
        raise DataError(f"{root}: no subfolder holds a {METADATA}; put one imagefolder per site")
    return folders


def _attribute(value: object, feature: object) -> str:
    """A dataset cell as a subgroup string (class labels by name, scalars as text)."""
    if isinstance(feature, datasets.ClassLabel):
        return feature.int2str(value)
    if isinstance(value, str | int | bool):
        return str(value)
    raise TypeError(type(value).__name__)


def _read_saved(root: Path) -> list[tuple[str, VQAExample]]:
    """The examples of a dataset saved with ``datasets``' ``save_to_disk``, checked."""
    loaded = datasets.load_from_disk(str(root))
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    rows = []
    for name, table in parts:
        where = f"{root} split '{name}'" if name else str(root)
        if name and canonical_split(name) is None:
            spelled = ", ".join((*SPLITS, *SPLIT_ALIASES))
            raise DataError(f"{where}: splits must be among {spelled}")
        missing = [c for c in ("image", "question", "answer") if c not in table.column_names]
        if missing:
            raise DataError(f"{where}: missing column(s) {', '.join(missing)}")
        extra = [c for c in table.column_names if c not in (*RESERVED_FIELDS, "image")]
        for number, record in enumerate(table):
            image, question, answer = record["image"], record["question"], record["answer"]
            if not isinstance(image, Image.Image):
                raise DataError(f"{where}: row {number}: 'image' is not an image")
            if not (isinstance(question, str) and question.strip()) or not (
                isinstance(answer, str) and answer.strip()
            ):
                raise DataError(f"{where}: row {number}: question and answer must be text")
            split = canonical_split(name or record.get("split") or hash_split(f"row-{number}"))
            if split is None:
                raise DataError(f"{where}: row {number}: split must be one of {SPLITS}")
            try:
                attributes = {c: _attribute(record[c], table.features[c]) for c in extra}
            except TypeError as err:
                raise DataError(f"{where}: row {number}: a column holds a {err}") from None
            example = VQAExample(
                image=image.convert("RGB"),
                question=question,
                answer=answer,
                question_type=record.get("question_type") or "",
                attributes=attributes,
            )
            rows.append((split, example))
    return rows


@lru_cache(maxsize=2)
def read_dataset(path: str) -> Rows:
    """All examples of an imagefolder or a ``save_to_disk`` dataset (once per process)."""
    root = Path(path).expanduser().resolve()
    if (root / METADATA).is_file():
        return tuple(read_imagefolder(root))
    if root.is_dir() and any((root / f).is_file() for f in ("state.json", "dataset_dict.json")):
        return tuple(_read_saved(root))
    raise DataError(
        f"{root}: neither an imagefolder ({METADATA}) nor a dataset saved with "
        "datasets' save_to_disk"
    )


def example_table(rows: Sequence[tuple[str, VQAExample]]) -> datasets.Dataset:
    """The columns a partitioner may split by: answer, question, type, attributes, split."""
    names = sorted({k for _, e in rows for k in e.attributes})
    columns = {
        INDEX: list(range(len(rows))),
        "split": [split for split, _ in rows],
        "question": [e.question for _, e in rows],
        "answer": [e.answer for _, e in rows],
        "question_type": [e.question_type for _, e in rows],
        **{k: [e.attributes.get(k, "") for _, e in rows] for k in names},
    }
    return datasets.Dataset.from_dict(columns)


def make_partitioner(sim: SimulationSettings, num_partitions: int, seed: int) -> Partitioner:
    """Flower Datasets' partitioner for ``sim-partitioner`` (keys named in errors)."""
    by = sim.partition_by
    if sim.partitioner == "iid":
        return IidPartitioner(num_partitions)
    if sim.partitioner == "dirichlet":
        return DirichletPartitioner(
            num_partitions,
            by,
            alpha=sim.label_alpha,
            min_partition_size=MIN_PARTITION_SIZE,
            seed=seed,
        )
    if sim.partitioner == "pathological":
        return PathologicalPartitioner(
            num_partitions, by, num_classes_per_partition=sim.classes_per_site, seed=seed
        )
    return NaturalIdPartitioner(by)


def _check_column(table: datasets.Dataset, sim: SimulationSettings) -> None:
    if sim.partitioner != "iid" and sim.partition_by not in table.column_names:
        raise ConfigError(
            "sim-partition-by",
            f"no column '{sim.partition_by}' in {sim.dataset} "
            f"(columns: {', '.join(c for c in table.column_names if c != INDEX)})",
        )


def natural_ids(sim: SimulationSettings) -> list[str]:
    """The sites a natural-id split makes: the column's distinct values, sorted."""
    table = example_table(read_dataset(sim.dataset))
    _check_column(table, sim)
    return sorted(map(str, table.unique(sim.partition_by)))


@lru_cache(maxsize=2)
def partitioned_sites(sim: SimulationSettings, num_partitions: int, seed: int) -> list[SiteData]:
    """Every site of ``sim.dataset`` split ``num_partitions`` ways, each checked non-empty.

    Raises
    ------
    ConfigError
        The partitioner cannot make ``num_partitions`` sites of this data (its reason).
    DataError
        A site would lack a train or validation example.
    """
    rows = read_dataset(sim.dataset)
    table = example_table(rows)
    _check_column(table, sim)
    partitioner = make_partitioner(sim, num_partitions, seed)
    # Shuffled with the run's seed first, as Flower Datasets' FederatedDataset does (its
    # `shuffle=True` default): IidPartitioner cuts contiguous shards, and a file is often
    # sorted (by split, class or site).
    partitioner.dataset = table.shuffle(seed=seed)
    names: dict[int, str] = {}
    if isinstance(partitioner, NaturalIdPartitioner):
        if partitioner.num_partitions != num_partitions:  # the column decides how many sites
            raise ConfigError(
                "num-supernodes",
                f"natural-id on '{sim.partition_by}' makes {partitioner.num_partitions} "
                f"sites, not {num_partitions}",
            )
        names = partitioner.partition_id_to_natural_id
    sites = []
    for partition_id in range(num_partitions):
        try:
            indices = partitioner.load_partition(partition_id)[INDEX]
        except ValueError as err:
            raise ConfigError("sim-partitioner", f"{sim.partitioner}: {err}") from None
        by_split = split_examples([rows[i] for i in indices])
        name = str(names.get(partition_id, f"partition-{partition_id}"))
        for split in REQUIRED_SPLITS:
            if not by_split[split]:
                raise DataError(
                    f"{sim.dataset}: site {partition_id} ({name}) of {num_partitions} by "
                    f"{sim.partitioner} has no {split} examples; use fewer sites or more data"
                )
        sites.append(
            SiteData(
                train=by_split["train"],
                val=by_split["validation"],
                test=by_split["test"],
                name=name,
                description={
                    "path": str(Path(sim.dataset).expanduser().resolve()),
                    "partitioner": sim.partitioner,
                    "partition_id": partition_id,
                    "n_train": len(by_split["train"]),
                    "n_val": len(by_split["validation"]),
                    "n_test": len(by_split["test"]),
                },
            )
        )
    return sites
