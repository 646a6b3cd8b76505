"""Settings are parsed once at the edge and every bad value names its key."""

import pytest

from fedvlm.config import NodeSettings, RunSettings
from fedvlm.data.partition import synthetic_site
from fedvlm.errors import ConfigError
from fedvlm.site_metrics import EvalSettings
from simulations.scenario import Scenario


def test_run_config_defaults_and_overrides():
    run = RunSettings.from_config({"num-server-rounds": 3, "learning-rate": 1, "lora-rank": 4})
    assert run.num_rounds == 3
    assert run.learning_rate == 1.0 and isinstance(run.learning_rate, float)
    assert run.lora.rank == 4


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num-server-rounds", 0),
        ("num-server-rounds", "5"),
        ("local-steps", True),
        ("learning-rate", -0.1),
        ("fraction-train", 1.5),
        ("lora-dropout", 1.0),
        ("sim-acquisition-skew", 2.0),
        ("sim-label-alpha", 0),
        ("base-model", ""),
    ],
)
def test_bad_run_config_names_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        RunSettings.from_config({key: value})
    assert err.value.key == key
    assert key in str(err.value)


def test_node_without_data_names_data_path():
    with pytest.raises(ConfigError, match="data-path"):
        NodeSettings.from_config({})


def test_node_partition_out_of_range():
    with pytest.raises(ConfigError, match="partition-id"):
        NodeSettings.from_config({"partition-id": 4, "num-partitions": 4})


def test_node_data_path_wins(tmp_path):
    node = NodeSettings.from_config({"data-path": str(tmp_path), "partition-id": 0})
    assert node.data_path == tmp_path and node.partition_id is None


def test_scenario_with_unknown_key_is_refused(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("[federation]\nnum-supernodes = 2\n[run-config]\nnum-rounds = 3\n")
    with pytest.raises(ConfigError, match="num-rounds") as err:
        Scenario.load(str(path))
    assert str(path) in str(err.value)


def test_builtin_scenarios_load():
    default = Scenario.load("default")
    assert default.num_sites == 4
    assert default.run_config["num-server-rounds"] == 5


def test_the_main_job_opts_into_a_subgroup_field_its_synthetic_sites_carry():
    """Subgroup fields are opt-in: a misspelt field in the main job would silently report none."""
    fields = EvalSettings.from_config(Scenario.load("default").run_config).subgroup_fields
    site = synthetic_site(0, 4, n_train=2, n_val=4, label_alpha=0.5, acquisition_skew=0.5, seed=0)
    assert fields and all(set(fields) <= set(e.attributes) for e in site.val)
