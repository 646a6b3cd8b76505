"""The one settings registry: pyproject's defaults, the parsers and docs/settings.md agree.

Mutations tried: changing a default in `fedvlm/config.py` (e.g. `local-steps` 16 -> 8) fails
`test_pyproject_declares_every_run_key_with_the_registry_default`; deleting a key's
declaration while pyproject still sets it fails the same test; adding a `setting(...)`
without regenerating the docs fails `test_docs_settings_table_is_generated_from_the_registry`.
"""

import math
import tomllib
from pathlib import Path

import pytest

from cli.settings import all_settings, settings_doc
from fedvlm.errors import ConfigError
from fedvlm.settings_registry import Scope, setting

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_app_config() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return not isinstance(a, bool) and not isinstance(b, bool) and math.isclose(a, b)
    return a == b and type(a) is type(b)


def test_pyproject_declares_every_run_key_with_the_registry_default():
    """Flower rejects `--run-config` keys pyproject does not declare, and pyproject's value is
    what a run really gets: each must be the declared default, so docs and code tell the truth."""
    declared = {s.key: s for s in all_settings()}
    pyproject = _pyproject_app_config()
    undeclared = sorted(set(pyproject) - set(declared))
    assert not undeclared, f"pyproject keys no module declares: {undeclared}"
    node_only = sorted(k for k in pyproject if declared[k].scope is Scope.NODE)
    assert not node_only, f"node-config keys in the run config: {node_only}"
    missing = sorted(
        k for k, s in declared.items() if s.scope is not Scope.NODE and k not in pyproject
    )
    assert not missing, f"run keys declared but absent from pyproject: {missing}"
    differ = {
        k: (pyproject[k], declared[k].default)
        for k in pyproject
        if not _same(pyproject[k], declared[k].default)
    }
    assert not differ, f"pyproject value vs declared default: {differ}"


def test_docs_settings_table_is_generated_from_the_registry():
    """docs/settings.md is `fedvlm settings` output: regenerate it when a key changes."""
    assert (ROOT / "docs" / "settings.md").read_text() == settings_doc()


def test_every_declared_default_passes_its_own_check_and_reads_back():
    for declared in all_settings():
        assert declared.read({}) == declared.default
        assert declared.read({declared.key: declared.default}) == declared.default


def test_a_key_is_declared_once_and_its_reader_names_it():
    with pytest.raises(ValueError, match="declared twice"):
        setting("local-steps", int, 1, "again")
    (steps,) = [s for s in all_settings() if s.key == "local-steps"]
    with pytest.raises(ConfigError, match="local-steps.*out of range"):
        steps.read({"local-steps": 0})
    with pytest.raises(ConfigError, match="local-steps.*expected an integer"):
        steps.read({"local-steps": True})
