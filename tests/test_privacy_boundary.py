"""Images stay home: what a site sends carries only the adapter update and scalars.

The real ClientApp trains the real embedded VLM on real image files written to disk; a
client mod wrapped around it captures every reply as it goes onto the wire (through Flower's
protobuf serialisation) and the test checks each one: only adapter tensors, with exactly
the adapter's names and shapes, and scalar metrics; no image-shaped array, and no string
that holds a file path, a file name, a question, an answer or a subgroup attribute.
"""

from collections.abc import Callable

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.serde import message_from_proto, message_to_proto

from client.app import app, site_name
from fedvlm import contract
from fedvlm.adapter import adapter_to_arrayrecord, get_adapter_state
from fedvlm.config import RunSettings
from fedvlm.data.imagefolder import write_imagefolder
from fedvlm.data.partition import synthetic_site
from fedvlm.vlm import load_peft_model

RUN_CONFIG = {"local-steps": 2, "batch-size": 4, "seed": 0, "energy-tracking": False}


def _wire(message: Message) -> Message:
    """What actually crosses the network: the message through Flower's protobuf."""
    return message_from_proto(message_to_proto(message))


def capture_mod(sent: list[Message]) -> Callable:
    """A client mod that records every reply the ClientApp sends, in its wire form."""

    def mod(msg: Message, context: Context, call_next: Callable) -> Message:
        reply = _wire(call_next(msg, context))
        sent.append(reply)
        return reply

    return mod


def test_replies_carry_only_the_adapter_update_and_scalars(serverapp_identity, tmp_path):
    site = synthetic_site(0, 2, n_train=8, n_val=4, label_alpha=0.5, acquisition_skew=0.5, seed=0)
    folder = write_imagefolder({"train": site.train, "validation": site.val}, tmp_path / "site")
    examples = site.train + site.val
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
        node_config={"data-path": str(folder)},
        state=RecordDict(),
        run_config=RUN_CONFIG,
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

    assert len(sent) == 2 and not any(m.has_error() for m in sent), [
        m.error for m in sent if m.has_error()
    ]
    train_reply, eval_reply = sent
    assert train_reply.metadata.message_type == MessageType.TRAIN
    assert set(train_reply.content) == {contract.ARRAYS, contract.METRICS, contract.SITE}
    assert set(eval_reply.content) == {contract.METRICS, contract.SITE}

    update = train_reply.content[contract.ARRAYS]
    assert list(update) == list(expected)  # exactly the adapter's names, in order
    assert {k: tuple(a.shape) for k, a in update.items()} == expected
    assert np.any([np.any(a.numpy() != 0) for a in update.values()])  # it did train

    for message in sent:
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
        text = message_to_proto(message).SerializeToString()
        for secret in secrets:
            assert secret.encode() not in text, secret
