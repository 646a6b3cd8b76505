"""Images stay home: what a site sends carries only the adapter update and scalars.

The real ClientApp trains the real embedded VLM on real image files written to disk; a
client mod wrapped around it captures every reply as it goes onto the wire (through Flower's
protobuf serialisation) and the test checks each one: only adapter tensors, with exactly
the adapter's names and shapes, and scalar metrics; no image-shaped array, and no string
that holds a file path, a file name, a question, an answer or a subgroup attribute. Every
reply's serialised bytes (errors and, in a secure run, every SecAgg stage included) are
searched for every metadata value of an identifier column; tests/test_wire_privacy.py does
the same on a deployed node's socket.
"""

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.serde import message_from_proto, message_to_proto

from client import app as client_app
from client.app import app
from client.node_app import app as node_app
from client.site_identity import site_name
from client.worker_channel import WORKER_SOCKET
from client.worker_supervisor import WorkerSupervisor
from fedvlm import contract
from fedvlm.adapter import adapter_to_arrayrecord, get_adapter_state
from fedvlm.config import RunSettings
from fedvlm.data.imagefolder import write_imagefolder
from fedvlm.data.partition import synthetic_site
from fedvlm.processes import child_env
from fedvlm.vlm import load_peft_model
from simulations.in_process import InProcessGrid, run_coordinator
from tests.identifier_column import with_identifier

RUN_CONFIG = {"local-steps": 2, "batch-size": 4, "seed": 0, "energy-tracking": False}


def _wire(message: Message) -> Message:
    """What actually crosses the network: the message through Flower's protobuf."""
    return message_from_proto(message_to_proto(message))


def capture_mod(sent: list[Message]) -> Callable:
    """A client mod that records every reply the ClientApp sends, in its wire form.

    An exception becomes the error reply Flower's ClientApp runtime sends in its place
    (flwr/supernode/runtime/run_clientapp.py builds its reason the same way).
    """

    def mod(msg: Message, context: Context, call_next: Callable) -> Message:
        try:
            reply = call_next(msg, context)
        except Exception as ex:  # noqa: BLE001 - what the runtime does with any exception
            reply = Message(
                Error(code=0, reason=str(type(ex)) + ":<'" + str(ex) + "'>"), reply_to=msg
            )
        reply = _wire(reply)
        sent.append(reply)
        return reply

    return mod


@pytest.fixture(params=["cold", "warm"])
def site_app(request):
    """The ClientApp a node runs, and node-config additions: in-process, or forwarding
    to a real warm site worker (what `fedvlm node` runs by default)."""
    if request.param == "cold":
        yield app, {}
        return
    with WorkerSupervisor(child_env()) as worker:
        yield node_app, {WORKER_SOCKET: str(worker.socket)}


def test_replies_carry_only_the_adapter_update_and_scalars(serverapp_identity, tmp_path, site_app):
    app, extra_config = site_app
    site = synthetic_site(0, 2, n_train=8, n_val=4, label_alpha=0.5, acquisition_skew=0.5, seed=0)
    # An identifier column, as a hospital export may carry one: its values went up as
    # metric keys (`eval-n/group/patient_ref=PATIENT-SECRET-0048`) before subgroups were
    # opt-in and small groups pooled (mutation: key every group by its value in
    # fedvlm/site_metrics.site_metrics, suppressed or not).
    site.train[:], site.val[:] = with_identifier(site.train, "t"), with_identifier(site.val, "v")
    folder = write_imagefolder({"train": site.train, "validation": site.val}, tmp_path / "site")
    examples = site.train + site.val
    metadata_values = {v for e in examples for v in e.attributes.values() if len(v) >= 6}
    image_shapes = {np.asarray(e.image).shape for e in examples}
    secrets = {str(folder), str(folder.resolve()), "metadata.jsonl", "images/", ".png"}
    labels = {e.answer for e in examples} | {e.question for e in examples}
    labels |= {v for e in examples for v in e.attributes.values()}

    run = RunSettings.from_config(RUN_CONFIG)
    model, _ = load_peft_model(run.base_model, run.lora)
    global_adapter = get_adapter_state(model)
    expected = {name: tuple(t.shape) for name, t in global_adapter.items()}
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"data-path": str(folder), **extra_config},
        state=RecordDict(),
        # The run even allow-lists the identifier: its unique values are pooled as (suppressed).
        run_config={
            **RUN_CONFIG,
            "eval-subgroup-fields": "patient_ref,lesion_count",
            "eval-personalise-steps": 1,
        },
    )
    train_config = ConfigRecord(
        {
            contract.SERVER_ROUND: 1,
            contract.LOCAL_STEPS: 2,
            contract.LEARNING_RATE: 3e-3,
            contract.BATCH_SIZE: 4,
            contract.SEED: 0,
        }
    )
    instructions = [
        Message(
            RecordDict(
                {contract.ARRAYS: adapter_to_arrayrecord(global_adapter), contract.CONFIG: cfg}
            ),
            7,
            kind,
        )
        for kind, cfg in (
            (MessageType.TRAIN, train_config),
            (MessageType.EVALUATE, ConfigRecord({contract.SERVER_ROUND: 1})),
        )
    ]

    sent: list[Message] = []
    mod = capture_mod(sent)
    for instruction in instructions:
        mod(_wire(instruction), context, app)
    # And an error reply: an evaluate instruction the ClientApp cannot use.
    broken = Message(RecordDict({contract.CONFIG: ConfigRecord({})}), 7, MessageType.EVALUATE)
    mod(_wire(broken), context, app)

    assert len(sent) == 3 and not any(m.has_error() for m in sent[:2]), [
        m.error for m in sent if m.has_error()
    ]
    assert sent[2].has_error()
    train_reply, eval_reply, _ = sent
    assert train_reply.metadata.message_type == MessageType.TRAIN
    assert set(train_reply.content) == {contract.ARRAYS, contract.METRICS, contract.SITE}
    assert set(eval_reply.content) == {contract.METRICS, contract.SITE}

    update = train_reply.content[contract.ARRAYS]
    assert list(update) == list(expected)  # exactly the adapter's names, in order
    assert {k: tuple(a.shape) for k, a in update.items()} == expected
    assert np.any([np.any(a.numpy() != 0) for a in update.values()])  # it did train

    assert "patient_ref=(suppressed)" in "".join(eval_reply.content[contract.METRICS])
    for message in sent:
        # No byte of any serialised reply (errors included) spells a metadata value.
        text = message_to_proto(message).SerializeToString()
        for value in metadata_values:
            assert value.encode() not in text, value
        if message.has_error():
            continue
        for name, record in message.content.items():
            # The one ConfigRecord (the only record that can hold strings) that leaves a site
            # holds its operator-given name alone, nothing read from its data.
            if name == contract.SITE:
                assert dict(record) == {contract.SITE_NAME: site_name(context)}
                continue
            assert isinstance(record, ArrayRecord | MetricRecord), (name, type(record))
            if isinstance(record, MetricRecord):
                for key, value in record.items():
                    assert isinstance(value, int | float), (key, value)  # scalars only
                    assert key not in labels
            else:
                for key, array in record.items():
                    assert tuple(array.shape) not in image_shapes, key
                    assert array.numpy().ndim <= 2, key
        # No byte of the serialised reply spells the data folder or its files.
        for secret in secrets:
            assert secret.encode() not in text, secret


class RecordingGrid(InProcessGrid):
    """The in-process federation, keeping the serialised bytes of every reply a site sends."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.wire: list[tuple[str, bytes]] = []

    def deliver(self, message: Message) -> Message | None:
        reply = super().deliver(message)
        if reply is not None:
            kind = message.metadata.message_type
            self.wire.append((kind, message_to_proto(reply).SerializeToString()))
        return reply


def test_no_metadata_value_leaves_a_site_in_any_message_of_a_secure_run(tmp_path):
    """Every message of a secure-aggregation run, and the coordinator's run folder.

    Three site folders with an identifier column that the run even allow-lists; the real
    coordinator main and ClientApp exchange every SecAgg stage, the evaluation and the
    personalised evaluation. No byte of any reply, and no file of the run folder, holds a
    metadata value (mutation: key every group by its value in fedvlm/site_metrics.site_metrics).
    """
    folders, values = [], set()
    for index in range(3):
        site = synthetic_site(
            index, 3, n_train=8, n_val=4, label_alpha=0.5, acquisition_skew=0.5, seed=0
        )
        splits = {}
        for name, split in (("train", site.train), ("validation", site.val)):
            splits[name] = with_identifier(split, f"{index}{name[0]}")
            values |= {e.attributes["patient_ref"] for e in splits[name]}
        folders.append(write_imagefolder(splits, tmp_path / f"site-{index}"))
    config = {
        **RUN_CONFIG,
        "local-steps": 1,
        "num-server-rounds": 1,
        "min-train-nodes": 3,
        "min-available-nodes": 3,
        "node-wait-timeout": 5.0,
        "site-data": "folders",
        "secure-aggregation": True,
        "eval-subgroup-fields": "patient_ref,lesion_count",
        "eval-personalise-steps": 1,
        "run-dir": str(tmp_path / "runs"),
        "run-name": "secure",
    }
    grid = RecordingGrid(client_app.app, config, [{"data-path": str(f)} for f in folders])
    run_coordinator(grid, config)

    kinds = {kind for kind, _ in grid.wire}
    assert MessageType.EVALUATE in kinds and len(kinds) >= 3, kinds  # SecAgg stages too
    for kind, text in grid.wire:
        for value in values:
            assert value.encode() not in text, (kind, value)
    written = [p for p in (tmp_path / "runs" / "secure").rglob("*") if p.is_file()]
    assert any(p.name.startswith("ledger") for p in written)
    for path in written:
        content = path.read_bytes()
        for value in values:
            assert value.encode() not in content, (path, value)
