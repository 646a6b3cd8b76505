"""Federated evaluation per site: the real ClientApp's evaluate replies, read by the coordinator.

Each site's figures must equal a direct evaluation of the same adapter on that site's split;
the coordinator's weighted mean, worst site and fairness gap must follow from them; a small
subgroup's accuracy never leaves the site, not even by subtraction from the others.
"""

import math

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from lora_start import b_moved_off_zero
from PIL import Image

from client import app as client_app
from client.site_data import load_site
from coordinator.site_evaluation import round_block
from fedvlm import contract
from fedvlm.adapter import Adapter, adapter_to_arrayrecord, get_adapter_state, set_adapter_state
from fedvlm.config import NodeSettings, RunSettings
from fedvlm.contract.eval_keys import (
    GROUP_ACC,
    GROUP_N,
    PERSONALISED_ACCURACY,
    TEST_ACCURACY,
    TEST_EXAMPLES,
    TYPE_ACC,
    TYPE_N,
)
from fedvlm.data import load_imagefolder, make_examples, write_imagefolder
from fedvlm.data.example import VQAExample
from fedvlm.errors import ConfigError
from fedvlm.site_metrics import (
    EvalSettings,
    SiteEvaluation,
    site_metrics,
    suppressed_values,
)
from fedvlm.training import evaluate, train_local
from fedvlm.vlm import load_peft_model
from simulations.in_process import over_the_wire

RUN_CONFIG = {
    "batch-size": 4,
    "learning-rate": 0.01,
    "sim-examples-per-site": 12,
    "sim-val-examples-per-site": 24,
    "energy-tracking": False,
    "eval-min-subgroup": 6,
    "eval-subgroup-fields": "lesion_count",
}
RUN = RunSettings.from_config(RUN_CONFIG)
NODES = {11: 0, 22: 1, 33: 2}  # node id -> partition


pytestmark = pytest.mark.usefixtures("serverapp_identity")  # messages are built here


@pytest.fixture(scope="module")
def global_adapter() -> Adapter:
    """An adapter with B moved off zero, so sites score differently from the base."""
    model, _ = load_peft_model(RUN.base_model, RUN.lora)
    return b_moved_off_zero(get_adapter_state(model), seed=3)


def _context(node: int, run_config=None) -> Context:
    return Context(
        run_id=1,
        node_id=node,
        node_config={"partition-id": NODES[node], "num-partitions": len(NODES)},
        state=RecordDict(),
        run_config=dict(run_config or RUN_CONFIG),
    )


def _evaluate(adapter: Adapter, node: int, run_config=None) -> Message:
    content = RecordDict({contract.ARRAYS: adapter_to_arrayrecord(adapter)})
    content[contract.CONFIG] = ConfigRecord({contract.SERVER_ROUND: 1})
    message = Message(content, dst_node_id=node, message_type="evaluate")
    return over_the_wire(client_app.app(over_the_wire(message), _context(node, run_config)))


def _site(node: int):
    return load_site(
        NodeSettings(partition_id=NODES[node], num_partitions=len(NODES)), RUN.simulation, 0
    )


def test_site_figures_match_a_direct_evaluation_and_the_coordinator_aggregates_them(
    global_adapter,
):
    replies = [_evaluate(global_adapter, node) for node in NODES]
    model, processor = load_peft_model(RUN.base_model, RUN.lora)
    set_adapter_state(model, global_adapter)
    direct = {}
    for node, reply in zip(NODES, replies, strict=True):
        assert not reply.has_error(), reply.error
        # scalars and the site's name only, no arrays
        assert list(reply.content) == [contract.METRICS, contract.SITE]
        sent = SiteEvaluation.from_metrics(reply.content[contract.METRICS])
        val = _site(node).val
        expected = evaluate(model, processor, val)
        direct[str(node)] = expected
        assert sent.examples == len(val) == expected.examples
        assert sent.accuracy == pytest.approx(expected.accuracy)
        assert sent.loss == pytest.approx(expected.loss, rel=1e-5)
        assert {t: n for t, (n, _) in sent.by_type.items()} == {
            t: n for t, (n, _) in expected.by_type.items()
        }
        for t, (_, acc) in expected.by_type.items():
            assert sent.by_type[t][1] == pytest.approx(acc)
        # Every example is counted, in its group or in the suppressed pool; each reported
        # accuracy is the group's own; only the pool goes unscored.
        groups = sent.subgroups["lesion_count"]
        assert sum(n for n, _ in groups.values()) == len(val)
        for value, (n, acc) in groups.items():
            if value == "(suppressed)":
                assert acc is None
                continue
            members = [ex for ex in val if ex.attributes["lesion_count"] == value]
            assert n == len(members) >= RUN_CONFIG["eval-min-subgroup"]
            assert acc == pytest.approx(evaluate(model, processor, members).accuracy)

    block = round_block(replies)
    shown = [
        a
        for s in block["sites"].values()
        for g in s["subgroups"]["lesion_count"].values()
        for a in [g["accuracy"]]
    ]
    assert any(a is None for a in shown) and any(a is not None for a in shown)  # both paths
    accuracies = {node: stats.accuracy for node, stats in direct.items()}
    total = sum(s.examples for s in direct.values())
    assert block["weighted_accuracy"] == pytest.approx(
        sum(s.examples * s.accuracy for s in direct.values()) / total
    )
    assert block["weighted_loss"] == pytest.approx(
        sum(s.examples * s.loss for s in direct.values()) / total, rel=1e-5
    )
    worst = min(accuracies, key=accuracies.get)
    assert block["worst_site"] == {
        "node": worst,
        "name": f"site-{NODES[int(worst)]}",
        "accuracy": pytest.approx(accuracies[worst]),
    }
    assert block["fairness_gap"] == pytest.approx(
        max(accuracies.values()) - min(accuracies.values())
    )
    assert set(block["sites"]) == set(accuracies) and block["failed"] == []
    # Sites are named as simulation names them (site-<partition>), node ids kept as keys.
    assert {n: s["name"] for n, s in block["sites"].items()} == {
        str(node): f"site-{partition}" for node, partition in NODES.items()
    }
    pooled = block["by_type"]
    for t, entry in pooled.items():
        pairs = [s.by_type[t] for s in direct.values() if t in s.by_type]
        assert entry["n"] == sum(n for n, _ in pairs)
        assert entry["accuracy"] == pytest.approx(sum(n * a for n, a in pairs) / entry["n"])


def test_worst_site_and_gap_from_known_replies_and_an_error_reply_is_listed_as_failed():
    def reply(node: int, n: int, acc: float) -> Message:
        metrics = {contract.NUM_EXAMPLES: n, contract.EVAL_LOSS: 1.0, contract.EVAL_ACCURACY: acc}
        message = Message(RecordDict(), dst_node_id=node, message_type="evaluate")
        return Message(RecordDict({contract.METRICS: MetricRecord(metrics)}), reply_to=message)

    failed = Message(
        Error(code=0, reason="boom"),
        reply_to=Message(RecordDict(), dst_node_id=4, message_type="evaluate"),
    )
    block = round_block([reply(1, 10, 0.9), reply(2, 30, 0.5), reply(3, 60, 0.7), failed])
    assert block["weighted_accuracy"] == pytest.approx((9 + 15 + 42) / 100)
    # No name in a reply (an older site): the node id stands in for it.
    assert block["worst_site"] == {"node": "2", "name": "2", "accuracy": 0.5}
    assert block["best_site"] == {"node": "1", "name": "1", "accuracy": 0.9}
    assert block["fairness_gap"] == pytest.approx(0.4)
    assert block["failed"] == ["4"]


def test_a_small_subgroup_is_suppressed_and_cannot_be_recovered_by_subtraction():
    # One small group alone would be recoverable from the overall accuracy: the next
    # smallest group is suppressed with it.
    assert suppressed_values({"A": 12, "B": 3, "C": 11}, 10) == {"B", "C"}
    assert suppressed_values({"A": 12, "B": 11}, 10) == set()
    assert suppressed_values({"A": 12, "B": 4, "C": 7}, 10) == {"B", "C"}  # 11 >= 10 together
    assert suppressed_values({"A": 30, "B": 2}, 10) == {"A", "B"}  # nothing can be shown

    image = Image.new("RGB", (64, 64))
    base = load_site(NodeSettings(partition_id=0, num_partitions=3), RUN.simulation, 0).val
    examples = [
        VQAExample(ex.image, ex.question, ex.answer, ex.question_type, {"scanner": s})
        for ex, s in zip(base, ["A"] * 12 + ["C"] * 11 + ["B"], strict=False)
    ]
    examples += [VQAExample(image, base[0].question, base[0].answer, base[0].question_type)] * 2
    model, processor = load_peft_model(RUN.base_model, RUN.lora)
    metrics = site_metrics(model, processor, examples, fields=["scanner"], min_subgroup=10)
    # B (1 example), the 2 examples without the field and, complementarily, C (11) are
    # suppressed: pooled, so neither their values nor their sizes leave the site.
    assert metrics[f"{GROUP_N}scanner=(suppressed)"] == 1 + 2 + 11
    for value in ("B", "C", "(missing)"):
        assert not any(key.endswith(f"scanner={value}") for key in metrics), value
    assert metrics[f"{GROUP_ACC}scanner=A"] == pytest.approx(
        evaluate(model, processor, examples[:12]).accuracy
    )
    parsed = SiteEvaluation.from_metrics(metrics)
    assert parsed.subgroups["scanner"]["(suppressed)"] == (14, None)
    assert all(
        key.startswith((TYPE_N, TYPE_ACC, GROUP_N, GROUP_ACC, "eval-", "num-")) for key in metrics
    )


def test_subgroups_are_opt_in_and_an_identifier_column_never_becomes_a_key():
    """A `patient_ref` column went up as `eval-n/group/patient_ref=PATIENT-SECRET-0048`.

    Every extra metadata field used to be a subgroup (the mutation: report every field in
    `subgroups` again, and the first assertions fail); now only allow-listed fields are, a
    site can narrow the list, and rare values are pooled.
    """
    base = load_site(NodeSettings(partition_id=0, num_partitions=3), RUN.simulation, 0).val
    examples = [
        VQAExample(
            ex.image,
            ex.question,
            ex.answer,
            ex.question_type,
            {"patient_ref": f"PATIENT-SECRET-{i:04d}", "scanner": "A"},
        )
        for i, ex in enumerate(base)
    ]
    model, processor = load_peft_model(RUN.base_model, RUN.lora)
    for fields in ((), ("scanner",)):
        metrics = site_metrics(model, processor, examples, fields=fields, min_subgroup=5)
        assert not any("patient_ref" in key or "SECRET" in key for key in metrics)
    assert metrics[f"{GROUP_N}scanner=A"] == len(examples)
    # Allow-listed by the run, each value unique: all pooled, no value named.
    metrics = site_metrics(model, processor, examples, fields=["patient_ref"], min_subgroup=2)
    assert not any("SECRET" in key for key in metrics)
    assert metrics[f"{GROUP_N}patient_ref=(suppressed)"] == len(examples)
    # The run's allow-list, narrowed (never widened) by the site's node config.
    run = {"eval-subgroup-fields": "scanner, sex"}
    assert EvalSettings.from_config(run).subgroup_fields == ("scanner", "sex")
    narrowed = EvalSettings.from_config(run, {"subgroup-fields": "sex,patient_ref"})
    assert narrowed.subgroup_fields == ("sex",)
    assert EvalSettings.from_config({}).subgroup_fields == ()


def test_personalised_accuracy_is_computed_on_site_and_the_tuned_adapter_stays_there(
    global_adapter,
):
    config = {**RUN_CONFIG, "eval-personalise-steps": 3}
    reply = _evaluate(global_adapter, 22, config)
    sent = SiteEvaluation.from_metrics(reply.content[contract.METRICS])
    assert list(reply.content) == [contract.METRICS, contract.SITE]
    model, processor = load_peft_model(RUN.base_model, RUN.lora)
    set_adapter_state(model, global_adapter)
    site = _site(22)
    train_local(
        model,
        processor,
        site.train,
        steps=3,
        lr=RUN.learning_rate,
        batch_size=RUN.batch_size,
        seed=RUN.seed + NODES[22],
    )
    expected = evaluate(model, processor, site.val)
    assert sent.personalised_accuracy == pytest.approx(expected.accuracy)
    assert sent.personalised_loss == pytest.approx(expected.loss, rel=1e-5)
    assert not math.isclose(sent.personalised_loss, sent.loss)  # local steps did something
    assert reply.content[contract.METRICS][PERSONALISED_ACCURACY] == sent.personalised_accuracy


def test_evaluation_settings_are_validated_naming_the_key():
    assert EvalSettings.from_config({}) == EvalSettings(min_subgroup=10, personalise_steps=0)
    with pytest.raises(ConfigError, match="eval-min-subgroup"):
        EvalSettings.from_config({"eval-min-subgroup": 0})
    with pytest.raises(ConfigError, match="eval-personalise-steps"):
        EvalSettings.from_config({"eval-personalise-steps": -1})


def test_a_sites_test_split_is_scored_apart_and_never_trained_on(tmp_path, global_adapter):
    """A deployed site with a ``test`` split: train counts only train, evaluate reports test apart.

    Mutation checked: ``train=by_split["train"] + by_split["test"]`` in
    fedvlm/data/imagefolder.py's load_imagefolder makes the ``num-examples`` assertion fail
    (11 == 6).
    """
    folder = write_imagefolder(
        {
            "train": make_examples(6, seed=1, image_size=16),
            "validation": make_examples(4, seed=2, image_size=16),
            "test": make_examples(5, seed=3, image_size=16),
        },
        tmp_path / "site",
    )
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"data-path": str(folder), contract.SITE_NAME: "hospital-a"},
        state=RecordDict(),
        run_config=RUN_CONFIG,
    )

    def send(message_type: str) -> Message:
        content = RecordDict({contract.ARRAYS: adapter_to_arrayrecord(global_adapter)})
        content[contract.CONFIG] = ConfigRecord(
            {
                contract.SERVER_ROUND: 1,
                contract.LOCAL_STEPS: 1,
                contract.LEARNING_RATE: 0.01,
                contract.BATCH_SIZE: 4,
                contract.SEED: 0,
            }
        )
        message = Message(content, dst_node_id=7, message_type=message_type)
        reply = over_the_wire(client_app.app(over_the_wire(message), context))
        assert not reply.has_error(), reply.error
        return reply

    trained = send("train").content[contract.METRICS]
    assert trained[contract.NUM_EXAMPLES] == 6  # the test split is not trained on
    sent = send("evaluate").content[contract.METRICS]
    site = load_imagefolder(folder)
    model, processor = load_peft_model(RUN.base_model, RUN.lora)
    set_adapter_state(model, global_adapter)
    expected = evaluate(model, processor, site.test)
    assert sent[contract.NUM_EXAMPLES] == 4 and sent[TEST_EXAMPLES] == 5
    assert sent[TEST_ACCURACY] == pytest.approx(expected.accuracy)
    validation = evaluate(model, processor, site.val)
    assert sent[contract.EVAL_ACCURACY] == pytest.approx(validation.accuracy)

    block = round_block([send("evaluate")])
    assert block["test"] == {
        "n": 5,
        "sites": 1,
        "weighted_accuracy": pytest.approx(expected.accuracy),
    }
    assert block["sites"]["7"]["test"]["n"] == 5
    assert block["sites"]["7"]["name"] == block["worst_site"]["name"] == "hospital-a"
    assert block["sites"]["7"]["examples"] == 4  # validation figures hold no test example
