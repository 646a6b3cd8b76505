"""Every record and key name on the wire comes from `fedvlm.contract`, never a string literal.

`client` and `coordinator` never import each other, so a key spelled as a literal on one side
(``config.get("proximal-mu")``) silently stops matching when the contract renames it on the
other. These tests read the source of the packages that build or read Flower Messages
(AST, no import) and fail on a string literal used as a record key:

- inside a ``Message`` / ``RecordDict`` / ``MetricRecord`` / ``ConfigRecord`` /
  ``ArrayRecord`` construction (a dict key at any depth of its arguments);
- as the key read from a record (``msg.content[...]``, ``.metric_records``, ``.config_records``,
  ``.array_records``, a node's ``context.state``, or a local name bound to one of those) with
  ``[...]``, ``.get``, ``.pop``, ``.setdefault`` or ``in``;
- anywhere as a key (dict key, ``[...]``, ``.get``, ``in``) when its value is a key the
  contract defines (``a-b`` or ``a/b``: one-word names such as ``"config"`` or ``"round"`` are
  also ordinary words, so only the two rules above judge them): use the constant.

Mutations checked when this test was written (each made a test here fail, naming file and
line): ``config.get(contract.PROXIMAL_MU, 0.0)`` back to ``config.get("proximal-mu", 0.0)`` in
``client/dp.py`` (test_no_wire_key_is_spelled_as_a_literal: "defined as
fedvlm.contract.PROXIMAL_MU"), and ``dp_keys.REFUSAL_KEY: key`` back to ``"key": key`` in
``privacy/site_account.py``'s refusal reply (same test: "literal key inside ConfigRecord(...)").
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import fedvlm.contract
from fedvlm.contract import dp_keys, energy_keys, eval_keys, secagg_keys

ROOT = Path(__file__).resolve().parent.parent

# The packages on either side of the wire, and what builds or reads their records.
SCANNED = ("client", "coordinator", "privacy", "strategies", "simulations")
RECORD_TYPES = {"Message", "RecordDict", "MetricRecord", "ConfigRecord", "ArrayRecord"}
RECORD_ATTRIBUTES = {"content", "metric_records", "config_records", "array_records", "state"}
KEY_METHODS = {"get", "pop", "setdefault"}

# (file, literal): a string equal to a contract key that is no record key there, and why.
NOT_WIRE = {
    # The report reads run.json's run config (Flower's [tool.flwr.app.config] keys, some of
    # which the coordinator forwards under the same names in the train ConfigRecord).
    ("coordinator/html_report.py", "learning-rate"),
    ("coordinator/html_report.py", "local-steps"),
}


def contract_constants() -> list[tuple[str, str, str]]:
    """``(module, NAME, value)`` of every string constant of the contract package."""
    modules = [fedvlm.contract, dp_keys, energy_keys, eval_keys, secagg_keys]
    return [
        (module.__name__, name, value)
        for module in modules
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str)
    ]


def _is_record(node: ast.expr, record_names: set[str]) -> bool:
    """Whether ``node`` is a Message's records or one record, e.g. ``msg.content[X].get(Y)``."""
    while True:
        if isinstance(node, ast.Subscript):
            node = node.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in KEY_METHODS
        ):
            node = node.func.value
        else:
            break
    if isinstance(node, ast.Attribute):
        return node.attr in RECORD_ATTRIBUTES
    return isinstance(node, ast.Name) and node.id in record_names


def _record_names(function: ast.AST) -> set[str]:
    """Local names bound to a record in ``function`` (``config = msg.content[CONFIG]``)."""
    names: set[str] = set()
    assignments = [n for n in ast.walk(function) if isinstance(n, ast.Assign)]
    for _ in range(3):  # a name bound to a name bound to a record
        for node in assignments:
            if _is_record(node.value, names):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _keys(node: ast.AST) -> list[tuple[ast.expr, ast.expr | None]]:
    """``(key, receiver)`` of each key ``node`` uses (receiver None: a dict display)."""
    if isinstance(node, ast.Dict):
        return [(key, None) for key in node.keys if key is not None]
    if isinstance(node, ast.Subscript):
        return [(node.slice, node.value)]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in KEY_METHODS
        and node.args
    ):
        return [(node.args[0], node.func.value)]
    if isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In | ast.NotIn):
        return [(node.left, node.comparators[0])]
    return []


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_key_name(value: str) -> bool:
    """A compound key (``dp-epsilon``, ``eval-acc/type/``), not an ordinary word."""
    return "-" in value or "/" in value


def violations(path: Path, source: str, constants: list[tuple[str, str, str]]) -> list[str]:
    """Every record key spelled as a literal in ``source`` (the module at ``path``)."""
    relative = path.relative_to(ROOT).as_posix()
    defined = {value: f"{module}.{name}" for module, name, value in constants}
    tree = ast.parse(source)
    reasons: dict[ast.expr, str] = {}  # one reason per literal, the first rule that fires

    # ast.walk goes outside in, so a key nested in two constructions names the inner one.
    for call in ast.walk(tree):
        func = getattr(call, "func", None)
        name = getattr(func, "id", getattr(func, "attr", None))
        if not (isinstance(call, ast.Call) and name in RECORD_TYPES):
            continue
        for display in (n for n in ast.walk(call) if isinstance(n, ast.Dict)):
            for key in display.keys:
                if key is not None and _literal(key) is not None:
                    reasons[key] = f"literal key inside {name}(...)"
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for scope in [tree, *functions]:
        record_names = set() if scope is tree else _record_names(scope)
        for node in ast.walk(scope):
            for key, receiver in _keys(node):
                value = _literal(key)
                if value is None or key in reasons or (relative, value) in NOT_WIRE:
                    continue
                if receiver is not None and _is_record(receiver, record_names):
                    reasons[key] = "literal key read from a record"
                elif value in defined and _is_key_name(value):
                    reasons[key] = "literal wire key"
    found = []
    for key, why in reasons.items():
        where = defined.get(_literal(key))
        hint = f"defined as {where}" if where else "add it to fedvlm.contract"
        found.append(f"{relative}:{key.lineno}: {_literal(key)!r} {why} ({hint})")
    return sorted(found)


def scanned_sources() -> list[Path]:
    return sorted(p for package in SCANNED for p in (ROOT / package).rglob("*.py"))


def test_no_wire_key_is_spelled_as_a_literal():
    constants = contract_constants()
    found = [v for p in scanned_sources() for v in violations(p, p.read_text(), constants)]
    assert not found, "record keys must come from fedvlm.contract:\n" + "\n".join(found)


def test_the_scan_sees_each_kind_of_literal_key():
    """Each rule fires on code written the way a slip would be written, and names the line."""
    source = """
def reply(msg, config, key):
    mu = config.get("proximal-mu", 0.0)
    refusal = msg.content.config_records.get(REFUSAL, {})
    reason = refusal.get("key", "dp-mode")
    metrics = MetricRecord({"num-examples": 1, NUM: 2})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
"""
    found = violations(ROOT / "client" / "example.py", source, contract_constants())
    assert found == [
        "client/example.py:3: 'proximal-mu' literal wire key"
        " (defined as fedvlm.contract.PROXIMAL_MU)",
        "client/example.py:5: 'key' literal key read from a record"
        " (defined as fedvlm.contract.dp_keys.REFUSAL_KEY)",
        "client/example.py:6: 'num-examples' literal key inside MetricRecord(...)"
        " (defined as fedvlm.contract.NUM_EXAMPLES)",
        "client/example.py:7: 'metrics' literal key inside RecordDict(...)"
        " (defined as fedvlm.contract.METRICS)",
    ]


def test_ordinary_words_and_non_record_dicts_pass():
    """A ledger row's ``"round"`` or a model card's ``"metrics"`` is no record key."""
    source = 'row = {"round": 1, "metrics": []}\nvalue = row["round"]\n'
    assert violations(ROOT / "coordinator" / "x.py", source, contract_constants()) == []


def test_wire_names_are_unique():
    """Two constants with one value would overwrite each other in the same record."""
    constants = contract_constants()
    values = [value for _, _, value in constants]
    assert len(values) == len(set(values)), sorted(v for v in values if values.count(v) > 1)
    # Every module of the package is read (a new one must join contract_constants).
    prefix = "fedvlm.contract."
    submodules = {info.name for info in pkgutil.iter_modules(fedvlm.contract.__path__, prefix)}
    assert {module for module, _, _ in constants} == {"fedvlm.contract", *submodules}
