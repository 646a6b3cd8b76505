"""Every setting a run or a node reads, declared once: key, type, default, range, meaning.

Flower hands both sides flat dictionaries of TOML scalars (`run_config` from pyproject's
`[tool.flwr.app.config]` plus `--run-config`, `node_config` from `--node-config`). Each key is
declared here by the module that owns it (`setting(...)` at module level, next to the
dataclass it fills), and that one declaration is what the parser reads with, what the
`pyproject.toml` defaults are checked against (`tests/test_settings_registry.py`) and what
`fedvlm settings` prints as the reference table of `docs/settings.md`. A key read anywhere
without a declaration has no default to check and no line in the docs: the test over the
registry finds it missing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fedvlm.errors import ConfigError

T = TypeVar("T")

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


class Scope(enum.Enum):
    """Where a key is set: the run (coordinator's run config) or one node's node config."""

    RUN = "run"
    NODE = "node"
    BOTH = "run, node overrides"


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
    if value == "" and default == "":  # TOML has no null: "" is "not set" for such a key
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(key, f"expected {_TYPE_NAMES[kind]}, got {value!r}")
    if check is not None and not check(value):
        raise ConfigError(key, f"{value!r} is out of range: expected {expect}")
    return value


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One declared key (see `setting`)."""

    key: str
    kind: type[T]
    default: T
    doc: str
    scope: Scope = Scope.RUN
    check: Callable[[T], bool] | None = None
    expect: str = ""

    def read(self, config: Mapping[str, Any]) -> T:
        """This key's value in `config`, checked; the default when absent."""
        return read(config, self.key, self.kind, self.default, self.check, self.expect)


SETTINGS: dict[str, Setting[Any]] = {}


def setting(
    key: str,
    kind: type[T],
    default: T,
    doc: str,
    *,
    scope: Scope = Scope.RUN,
    check: Callable[[T], bool] | None = None,
    expect: str = "",
) -> Setting[T]:
    """Declare a key (once, by the module that owns it) and return it for that module to read.

    Raises
    ------
    ValueError
        When two modules declare the same key: one key, one meaning.
    """
    declared = Setting(key, kind, default, doc, scope, check, expect)
    if key in SETTINGS:
        raise ValueError(f"setting {key!r} is declared twice")
    if check is not None and not check(default):
        raise ValueError(f"setting {key!r}: default {default!r} fails its own check ({expect})")
    SETTINGS[key] = declared
    return declared


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def markdown_table(settings: Iterable[Setting[Any]]) -> str:
    """The reference table of the docs: key, where it is set, type, default, range, meaning."""
    lines = [
        "| key | set in | type | default | accepted | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for s in sorted(settings, key=lambda s: (s.scope.value, s.key)):
        accepted = s.expect.replace("|", "\\|") or "any"
        lines.append(
            f"| `{s.key}` | {s.scope.value} | {s.kind.__name__} | `{_toml(s.default)}` "
            f"| {accepted} | {s.doc} |"
        )
    return "\n".join(lines) + "\n"
