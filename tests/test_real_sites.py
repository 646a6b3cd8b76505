"""Simulated sites over real images: site folders, and one dataset split by flwr-datasets.

Every partitioner kind runs through Flower Datasets on a small local dataset of real scanned
digits (tests/real_images.py); a bad site folder is refused before Flower starts, naming the
file and line.
"""

from collections import Counter

import datasets
import pytest

from cli.main import main
from client.site_data import load_site
from fedvlm.config import NodeSettings, SimulationSettings
from fedvlm.data.real_sites import partitioned_sites, read_dataset
from fedvlm.errors import ConfigError, DataError
from simulations.real_data import with_data
from simulations.scenario import Scenario
from tests.real_images import HOSPITALS, digit_examples, write_digit_folder, write_digit_sites

N = 90  # examples in the partitioned dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(write_digit_folder(tmp_path_factory.mktemp("digits") / "all", 0, N))


def _sim(dataset, **keys) -> SimulationSettings:
    return SimulationSettings.from_config(
        {"site-data": "partitioned", "sim-dataset": dataset, **keys}
    )


def _answers(site) -> list[str]:
    return [e.answer for e in site.train + site.val]


def _cover(sites) -> Counter:
    """How often each example (by identity) appears over all sites."""
    return Counter(id(e) for s in sites for e in s.train + s.val)


def test_iid_cuts_the_dataset_into_equal_disjoint_sites(dataset):
    sites = partitioned_sites(_sim(dataset, **{"sim-partitioner": "iid"}), 3, 0)
    assert [len(s.train) + len(s.val) for s in sites] == [30, 30, 30]
    cover = _cover(sites)
    assert len(cover) == N and set(cover.values()) == {1}  # every example once
    assert all(s.train and s.val for s in sites)


def test_dirichlet_skews_labels_and_follows_the_seed(dataset):
    sim = _sim(dataset, **{"sim-partitioner": "dirichlet", "sim-label-alpha": 0.1})
    sites = partitioned_sites(sim, 3, 0)
    assert set(_cover(sites).values()) == {1} and len(_cover(sites)) == N
    # At alpha 0.1 each site is dominated by few digits; a uniform split gives ~10%.
    top_share = [Counter(_answers(s)).most_common(1)[0][1] / len(_answers(s)) for s in sites]
    assert max(top_share) > 0.3, top_share
    again = partitioned_sites(sim, 3, 0)
    other = partitioned_sites(sim, 3, 1)
    assert [_answers(s) for s in again] == [_answers(s) for s in sites]
    assert [_answers(s) for s in other] != [_answers(s) for s in sites]


def test_pathological_gives_each_site_only_its_classes(dataset):
    sim = _sim(dataset, **{"sim-partitioner": "pathological", "sim-classes-per-site": 4})
    sites = partitioned_sites(sim, 3, 0)
    for site in sites:
        assert 1 <= len(set(_answers(site))) <= 4, set(_answers(site))


def test_natural_id_makes_one_named_site_per_hospital(dataset):
    sim = _sim(dataset, **{"sim-partitioner": "natural-id", "sim-partition-by": "hospital"})
    sites = partitioned_sites(sim, len(HOSPITALS), 0)
    assert [s.name for s in sites] == sorted(HOSPITALS)
    for site in sites:
        assert {e.attributes["hospital"] for e in site.train + site.val} == {site.name}
    with pytest.raises(ConfigError, match="num-supernodes.*3 sites, not 2"):
        partitioned_sites(sim, 2, 0)


def test_an_unknown_partition_column_names_the_key_and_the_columns(dataset):
    sim = _sim(dataset, **{"sim-partitioner": "dirichlet", "sim-partition-by": "scanner"})
    with pytest.raises(ConfigError, match="sim-partition-by.*hospital"):
        partitioned_sites(sim, 3, 0)


def test_a_simulated_node_loads_its_partition_through_site_data(dataset):
    sim = _sim(dataset, **{"sim-partitioner": "iid"})
    node = NodeSettings.from_config({"partition-id": 1, "num-partitions": 3})
    site = load_site(node, sim, 0)
    assert _answers(site) == _answers(partitioned_sites(sim, 3, 0)[1])


def test_a_save_to_disk_dataset_is_partitioned_like_an_imagefolder(tmp_path):
    examples = digit_examples(0, 30)
    table = datasets.Dataset.from_dict(
        {
            "image": [e.image for e in examples],
            "question": [e.question for e in examples],
            "answer": [e.answer for e in examples],
            "hospital": [e.attributes["hospital"] for e in examples],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "question": datasets.Value("string"),
                "answer": datasets.Value("string"),
                "hospital": datasets.Value("string"),
            }
        ),
    )
    table.save_to_disk(tmp_path / "saved")
    rows = read_dataset(str(tmp_path / "saved"))
    assert [e.answer for _, e in rows] == [e.answer for e in examples]
    assert {split for split, _ in rows} == {"train", "validation"}  # hashed 80/20
    sim = _sim(
        str(tmp_path / "saved"),
        **{"sim-partitioner": "natural-id", "sim-partition-by": "hospital"},
    )
    assert len(partitioned_sites(sim, 3, 0)) == 3


def test_sites_dir_becomes_one_validated_site_per_folder(tmp_path, monkeypatch):
    sites_dir, heldout = write_digit_sites(tmp_path)
    monkeypatch.chdir(tmp_path)
    (sites_dir / "notes").mkdir()  # no metadata.jsonl: not a site
    scenario, overrides = with_data(
        Scenario.load("smoke"), {"sites": str(sites_dir)}, {"heldout-path": "heldout"}
    )
    assert overrides == {"heldout-path": str(heldout)}  # absolute: the ServerApp's cwd differs
    assert scenario.num_sites == 3
    assert scenario.run_config["site-data"] == "folders"
    sim = SimulationSettings.from_config(scenario.run_config)
    node = NodeSettings.from_config({"partition-id": 2, "num-partitions": 3})
    assert load_site(node, sim, 0).name == "site-2"


def test_a_heldout_folder_beside_the_sites_never_becomes_a_site(tmp_path):
    sites_dir, heldout = write_digit_sites(tmp_path)
    inside = heldout.rename(sites_dir / "heldout")
    # Without heldout-path it is a site like any other, and one without training images.
    with pytest.raises(DataError, match="heldout/metadata.jsonl: split 'train' has no examples"):
        with_data(Scenario.load("smoke"), {"sites": str(sites_dir)})
    scenario, _ = with_data(
        Scenario.load("smoke"), {"sites": str(sites_dir)}, {"heldout-path": str(inside)}
    )
    assert scenario.num_sites == 3
    sim = SimulationSettings.from_config(scenario.run_config)
    names = [
        load_site(NodeSettings(partition_id=i, num_partitions=3), sim, 0, str(inside)).name
        for i in range(3)
    ]
    assert names == ["site-0", "site-1", "site-2"]


def test_a_bad_site_folder_is_refused_before_flower_starts_naming_file_and_line(tmp_path, capsys):
    sites_dir, _ = write_digit_sites(tmp_path)
    metadata = sites_dir / "site-1" / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    lines[1] = lines[1].replace('"answer"', '"answr"')
    metadata.write_text("\n".join(lines) + "\n")

    code = main(["simulate", "--sites", str(sites_dir), "--run-dir", str(tmp_path / "runs")])

    assert code == 2
    err = capsys.readouterr().err
    assert f"{metadata}:2: missing field 'answer'" in err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_a_bad_heldout_folder_is_refused_before_flower_starts(tmp_path, capsys):
    sites_dir, heldout = write_digit_sites(tmp_path)
    (heldout / "metadata.jsonl").write_text('{"file_name": "images/x.png"}\n')
    code = main(
        [
            "simulate",
            "--sites",
            str(sites_dir),
            "--run-config",
            f'heldout-path="{heldout}"',
            "--run-dir",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 2
    assert f"{heldout / 'metadata.jsonl'}:1: missing field 'question'" in capsys.readouterr().err


def test_a_site_that_a_partition_leaves_without_validation_is_named(tmp_path):
    write_digit_folder(tmp_path / "few", 0, 8, val_every=8)  # one validation example
    sim = _sim(str(tmp_path / "few"), **{"sim-partitioner": "iid"})
    with pytest.raises(
        DataError, match=r"few: site \d \(partition-\d\) of 2 by iid has no validation examples"
    ):
        partitioned_sites(sim, 2, 0)
