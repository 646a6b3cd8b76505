"""Every TOML we hand to Flower parses back to the values we meant.

Before `fedvlm/flower_toml.py`, `coordinator/launch.py` wrote ``json.dumps(inf)`` (``Infinity``,
invalid TOML) and `fedvlm/processes.py` wrote paths unescaped; these cases are those bugs.
"""

import math
import tomllib

import pytest
from flwr.common.config import parse_config_args

from fedvlm.errors import FedVLMError
from fedvlm.flower_toml import config_file_text, connection_file_text, inline_config, toml_value

AWKWARD = {
    "dp-epsilon": math.inf,
    "run-name": 'say "hi"',
    "data-path": "C:\\sites\\hospital-a",
    "secure-aggregation": True,
    "local-steps": 3,
    "learning-rate": 0.003,
}


def test_a_run_config_file_round_trips_inf_quotes_and_backslashes():
    assert tomllib.loads(config_file_text(AWKWARD)) == AWKWARD


def test_inline_configs_parse_back_through_flowers_own_parser():
    """`--node-config` / `--federation-config` strings as `flwr` itself reads them."""
    assert parse_config_args([inline_config(AWKWARD, "--node-config")]) == AWKWARD
    for key, value in AWKWARD.items():
        assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value, key


def test_the_connection_file_is_flowers_shape():
    text = connection_file_text(
        "fedvlm", {"address": "127.0.0.1:9093", "root-certificates": "C:\\ca.crt"}
    )
    parsed = tomllib.loads(text)
    assert parsed["superlink"]["default"] == "fedvlm"
    assert parsed["superlink"]["fedvlm"] == {
        "address": "127.0.0.1:9093",
        "root-certificates": "C:\\ca.crt",
    }


def test_a_value_flowers_inline_parser_cannot_carry_is_refused():
    with pytest.raises(FedVLMError, match="--node-config note: a value holding both"):
        inline_config({"note": 'it\'s "x"'}, "--node-config")


def test_a_non_scalar_is_refused_naming_the_flag_and_key():
    with pytest.raises(FedVLMError, match="--run-config sites: only scalars"):
        config_file_text({"sites": [1, 2]})
