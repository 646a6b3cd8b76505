"""TOML for Flower's files and flags, written by `tomli_w`, never by hand.

Flower reads TOML in four places we write: `--run-config FILE`, `--node-config 'k=v ...'`,
`--federation-config 'k=v ...'` and `FLWR_HOME/config.toml`. Hand-made TOML went wrong on the
values users do give (``json.dumps(inf)`` is ``Infinity``, invalid TOML; a Windows path's
backslashes; quotes in a run name), so every value goes through `tomli_w`, which ships with Flower.
"""

from collections.abc import Mapping
from typing import Any

import tomli_w

from fedvlm.errors import FedVLMError

Scalar = str | int | float | bool


def _scalars(values: Mapping[str, Any], flag: str) -> dict[str, Scalar]:
    """The mapping, refused with the flag and key at fault when a value is not a scalar."""
    for key, value in values.items():
        if not isinstance(value, Scalar):
            raise FedVLMError(f"{flag} {key}: only scalars are allowed, got {value!r}")
    return dict(values)


def toml_value(value: Scalar) -> str:
    """One scalar as a TOML value (``inf``, ``"C:\\\\data"``, ``true``)."""
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def config_file_text(values: Mapping[str, Any], flag: str = "--run-config") -> str:
    """A flat TOML document of scalars, as `flwr run --run-config FILE` reads it."""
    return tomli_w.dumps(_scalars(values, flag))


def _inline_value(key: str, value: Scalar, flag: str) -> str:
    """A TOML value that Flower's inline parser reads back whole.

    Flower splits inline configs with the pattern ``"[^"]*"`` (or ``'[^']*'``), so an escaped
    double quote ends the value early: such a string goes as a TOML literal string instead.
    """
    if not (isinstance(value, str) and '"' in value):
        return toml_value(value)
    if "'" in value or "\n" in value:
        raise FedVLMError(
            f"{flag} {key}: a value holding both quote kinds or a newline cannot pass "
            f"through Flower's inline config, got {value!r}"
        )
    return f"'{value}'"


def inline_config(values: Mapping[str, Any], flag: str) -> str:
    """Flower's inline form: space-separated ``key=value`` with TOML values."""
    checked = _scalars(values, flag)
    return " ".join(f"{k}={_inline_value(k, v, flag)}" for k, v in checked.items())


def connection_file_text(name: str, connection: Mapping[str, Scalar]) -> str:
    """`FLWR_HOME/config.toml` with one SuperLink connection, the default."""
    return tomli_w.dumps({"superlink": {"default": name, name: dict(connection)}})
