"""What a site reports about its own validation split, and how the coordinator reads it back.

Both sides of the federated evaluation use this module; its MetricRecord keys are part of the
message contract (``fedvlm.contract.eval_keys``). A site sends scalars only: its loss and
accuracy, per question type the count and accuracy, and per subgroup (a value of an optional
attribute field of its ``metadata.jsonl``, e.g. ``scanner=B``) the count and accuracy of the
groups large enough to report. A group below ``eval-min-subgroup`` examples is *suppressed*:
neither its value, its count nor its accuracy travels; the suppressed groups of a field are
pooled as one ``(suppressed)`` group whose count alone is sent (it equals the site's total
minus the reported groups, so withholding it would hide nothing), never scored.

Subgroups are opt-in: only the fields named in the run config's ``eval-subgroup-fields``
(and, if the site sets ``subgroup-fields`` in its node config, also there: a site can narrow
the list, never widen it) are reported at all, so an identifier column (``patient_ref``) never
becomes a key; within a reported field, the suppression below keeps rare values' names
home too.

Suppression alone is not enough: with the site's overall accuracy and every other group's
accuracy known, a single suppressed group's accuracy is a subtraction away. So the smallest
reported groups of the same field are suppressed too, until the suppressed groups together
hold at least the minimum (complementary suppression, as statistical offices do).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedModel, ProcessorMixin

from fedvlm import contract
from fedvlm.adapter import get_adapter_state, set_adapter_state
from fedvlm.contract.eval_keys import (
    GROUP_ACC,
    GROUP_N,
    PERSONALISED_ACCURACY,
    PERSONALISED_LOSS,
    TEST_ACCURACY,
    TEST_EXAMPLES,
    TEST_LOSS,
    TYPE_ACC,
    TYPE_N,
)
from fedvlm.data.example import VQAExample
from fedvlm.settings_registry import Scope, setting
from fedvlm.training import EvalStats, evaluate, train_local

# Evaluation keys read by the sites.
MIN_SUBGROUP = setting(
    "eval-min-subgroup",
    int,
    10,
    "Smallest subgroup whose accuracy a site reports; smaller ones are pooled as (suppressed).",
    check=lambda v: v >= 1,
    expect=">= 1",
)
PERSONALISE_STEPS = setting(
    "eval-personalise-steps",
    int,
    0,
    "Local steps of the personalised view (0: none; refused under sample-level DP).",
    check=lambda v: v >= 0,
    expect=">= 0",
)
SUBGROUP_FIELDS = setting(
    "eval-subgroup-fields",
    str,
    "",
    'Metadata fields reported per subgroup, comma-separated ("scanner,sex"); empty: none.',
)
SITE_SUBGROUP_FIELDS = setting(
    "subgroup-fields",
    str,
    "",
    "A site's own narrower list of eval-subgroup-fields it agrees to report.",
    scope=Scope.NODE,
)

UNTYPED = "untyped"  # name of the question type of examples that have none
MISSING = "(missing)"  # value of a field an example does not carry
SUPPRESSED = "(suppressed)"  # the pooled suppressed groups of a field


@dataclass(frozen=True)
class EvalSettings:
    """The site-side evaluation options of the run config, validated once."""

    min_subgroup: int = MIN_SUBGROUP.default
    personalise_steps: int = PERSONALISE_STEPS.default
    subgroup_fields: tuple[str, ...] = ()

    @classmethod
    def from_config(
        cls, config: Mapping[str, object], node_config: Mapping[str, object] | None = None
    ) -> EvalSettings:
        """Read ``eval-min-subgroup`` (>= 1), ``eval-personalise-steps`` (>= 0) and the
        subgroup allow-list: ``eval-subgroup-fields``, narrowed by the node's
        ``subgroup-fields`` when the site sets one."""
        fields = _field_list(SUBGROUP_FIELDS.read(config))
        if node_config is not None and SITE_SUBGROUP_FIELDS.key in node_config:
            own = _field_list(SITE_SUBGROUP_FIELDS.read(node_config))
            fields = [f for f in fields if f in own]
        return cls(
            min_subgroup=MIN_SUBGROUP.read(config),
            personalise_steps=PERSONALISE_STEPS.read(config),
            subgroup_fields=tuple(fields),
        )


def _field_list(text: str) -> list[str]:
    """``"scanner, sex"`` -> ``["scanner", "sex"]`` (Flower's run config holds no lists)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def subgroups(
    examples: Sequence[VQAExample], fields: Collection[str]
) -> dict[str, dict[str, list[VQAExample]]]:
    """Examples by allowed attribute field, then by value; an absent field is ``MISSING``.

    Only ``fields`` (the allow-list) are grouped at all. Every field's groups partition the
    whole split, which is what makes complementary suppression (see the module docstring)
    sound; small groups are pooled by `site_metrics` before any key is built.
    """
    groups: dict[str, dict[str, list[VQAExample]]] = {}
    for name in sorted(set(fields)):
        by_value: dict[str, list[VQAExample]] = defaultdict(list)
        for ex in examples:
            by_value[str(ex.attributes.get(name, MISSING))].append(ex)
        groups[name] = dict(sorted(by_value.items()))
    return groups


def suppressed_values(counts: Mapping[str, int], minimum: int) -> set[str]:
    """The values of one field whose accuracy must not be reported.

    Groups under ``minimum`` first; then, while the suppressed groups hold fewer than
    ``minimum`` examples together, the smallest remaining group as well, so no suppressed
    accuracy can be recovered from the site's overall accuracy and the reported ones.
    """
    hidden = {value for value, n in counts.items() if n < minimum}
    visible = sorted((n, value) for value, n in counts.items() if value not in hidden)
    while hidden and visible and sum(counts[v] for v in hidden) < minimum:
        hidden.add(visible.pop(0)[1])
    return hidden


def site_metrics(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    examples: Sequence[VQAExample],
    *,
    fields: Collection[str] = (),
    min_subgroup: int = MIN_SUBGROUP.default,
    stats: EvalStats | None = None,
) -> dict[str, float | int]:
    """The scalars a site sends about ``examples`` (its validation split).

    ``fields``: the attribute fields allowed to be reported (`EvalSettings.subgroup_fields`);
    none by default.

    ``stats`` is the overall ``evaluate`` result when the caller already has it. Subgroup
    accuracies come from evaluating each reported group on its own; suppressed groups are
    never evaluated, so their accuracy does not even exist on the site's side of the reply.
    """
    stats = stats or evaluate(model, processor, examples)
    metrics: dict[str, float | int] = {
        contract.NUM_EXAMPLES: stats.examples,
        contract.EVAL_LOSS: stats.loss,
        contract.EVAL_ACCURACY: stats.accuracy,
    }
    for name, (count, accuracy) in stats.by_type.items():
        metrics[TYPE_N + (name or UNTYPED)] = count
        metrics[TYPE_ACC + (name or UNTYPED)] = accuracy
    for name, by_value in subgroups(examples, fields).items():
        hidden = suppressed_values({v: len(g) for v, g in by_value.items()}, min_subgroup)
        for value, group in by_value.items():
            if value not in hidden:
                metrics[f"{GROUP_N}{name}={value}"] = len(group)
                metrics[f"{GROUP_ACC}{name}={value}"] = evaluate(model, processor, group).accuracy
        if hidden:  # pooled: no small group's value or size leaves the site
            metrics[f"{GROUP_N}{name}={SUPPRESSED}"] = sum(len(by_value[v]) for v in hidden)
    return metrics


def test_metrics(
    model: PreTrainedModel, processor: ProcessorMixin, examples: Sequence[VQAExample]
) -> dict[str, float | int]:
    """The scalars a site sends about its test split; nothing when it has none.

    Kept under their own keys so the coordinator never mixes them into validation figures
    (which choose and compare runs) and can report the test split on its own.
    """
    if not examples:
        return {}
    stats = evaluate(model, processor, examples)
    return {TEST_EXAMPLES: stats.examples, TEST_LOSS: stats.loss, TEST_ACCURACY: stats.accuracy}


def personalised(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    train: Sequence[VQAExample],
    val: Sequence[VQAExample],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> EvalStats:
    """Validation loss and accuracy after ``steps`` local steps from the current adapter.

    The fine-tuned adapter exists only inside this call: the model's adapter is restored
    before returning, so nothing of the local fine-tuning can reach a reply.
    """
    before = get_adapter_state(model)
    try:
        train_local(model, processor, train, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
        return evaluate(model, processor, val)
    finally:
        set_adapter_state(model, before)


@dataclass(frozen=True)
class SiteEvaluation:
    """One site's evaluation reply, read back on the coordinator's side."""

    examples: int
    loss: float
    accuracy: float
    by_type: dict[str, tuple[int, float]] = field(default_factory=dict)
    # field -> value -> (count, accuracy or None when suppressed)
    subgroups: dict[str, dict[str, tuple[int, float | None]]] = field(default_factory=dict)
    personalised_accuracy: float | None = None
    personalised_loss: float | None = None
    test_examples: int = 0
    test_accuracy: float | None = None
    test_loss: float | None = None

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float | int]) -> SiteEvaluation:
        """Parse a site's MetricRecord; keys this version does not know are ignored."""
        by_type = {
            key[len(TYPE_N) :]: (int(n), float(metrics[TYPE_ACC + key[len(TYPE_N) :]]))
            for key, n in metrics.items()
            if key.startswith(TYPE_N) and TYPE_ACC + key[len(TYPE_N) :] in metrics
        }
        groups: dict[str, dict[str, tuple[int, float | None]]] = defaultdict(dict)
        for key, n in metrics.items():
            if key.startswith(GROUP_N):
                name, _, value = key[len(GROUP_N) :].partition("=")
                accuracy = metrics.get(GROUP_ACC + key[len(GROUP_N) :])
                groups[name][value] = (int(n), None if accuracy is None else float(accuracy))
        optional = {k: metrics.get(k) for k in (PERSONALISED_ACCURACY, PERSONALISED_LOSS)}
        return cls(
            examples=int(metrics[contract.NUM_EXAMPLES]),
            loss=float(metrics[contract.EVAL_LOSS]),
            accuracy=float(metrics[contract.EVAL_ACCURACY]),
            by_type=dict(sorted(by_type.items())),
            subgroups={k: dict(sorted(v.items())) for k, v in sorted(groups.items())},
            personalised_accuracy=None
            if optional[PERSONALISED_ACCURACY] is None
            else float(optional[PERSONALISED_ACCURACY]),
            personalised_loss=None
            if optional[PERSONALISED_LOSS] is None
            else float(optional[PERSONALISED_LOSS]),
            test_examples=int(metrics.get(TEST_EXAMPLES, 0)),
            test_accuracy=float(metrics[TEST_ACCURACY]) if TEST_ACCURACY in metrics else None,
            test_loss=float(metrics[TEST_LOSS]) if TEST_LOSS in metrics else None,
        )
