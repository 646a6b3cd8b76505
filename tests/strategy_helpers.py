"""Helpers shared by the strategy tests: a tiny adapter, a fake Grid, real Messages.

Messages are real `flwr.app.Message` objects: instructions come from the strategy's own
`configure_train`, replies are built with ``Message(content, reply_to=instruction)``
exactly as a ClientApp does. Only the Grid is faked (it just lists node ids).
"""

from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedvlm import contract

LORA_A = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
LORA_B = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight"
PROJECTOR = "base_model.model.model.multi_modal_projector.linear_1.modules_to_save.default.weight"


class FakeGrid:
    """The one Grid method Flower's FedAvg sampling calls."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give this process the run identity a ServerApp has, so Messages can be built."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def adapter(seed: int = 0, rank: int = 4, scale: float = 1.0) -> dict[str, np.ndarray]:
    """A tiny PEFT-named adapter (one LoRA pair and a projector), float32."""
    rng = np.random.default_rng(seed)
    return {
        LORA_A: (scale * rng.standard_normal((rank, 16))).astype(np.float32),
        LORA_B: (scale * rng.standard_normal((12, rank))).astype(np.float32),
        PROJECTOR: (scale * rng.standard_normal((8, 6))).astype(np.float32),
    }


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(value)) for name, value in arrays.items()})


def send(strategy, global_arrays, server_round: int = 1, nodes=(11, 12, 13)) -> list[Message]:
    """Run the strategy's configure_train against a fake grid; messages sorted by node."""
    messages = strategy.configure_train(
        server_round, record(global_arrays), ConfigRecord({}), FakeGrid(nodes)
    )
    return sorted(messages, key=lambda m: m.metadata.dst_node_id)


def reply(
    instruction: Message, update: dict[str, np.ndarray], num_examples=10, **metrics: float
) -> Message:
    """A train reply as a ClientApp builds it: update arrays + metrics."""
    content = RecordDict(
        {
            contract.ARRAYS: record(update),
            contract.METRICS: MetricRecord({contract.NUM_EXAMPLES: num_examples, **metrics}),
        }
    )
    return Message(content, reply_to=instruction)


def error_reply(instruction: Message, reason: str = "out of memory") -> Message:
    return Message(Error(code=0, reason=reason), reply_to=instruction)


def to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in arrays.items()}
