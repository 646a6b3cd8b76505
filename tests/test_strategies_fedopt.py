"""FedAdam / FedYogi on the mean update: a hand reference, Flower's own, and resume."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower

from fedvlm import contract
from fedvlm.errors import ConfigError
from strategies import FedAdam, FedYogi
from tests.strategy_helpers import (
    FakeGrid,
    record,
    reply,
    send,
    task_identity,  # noqa: F401 - autouse fixture
    to_numpy,
)

ETA, BETA_1, BETA_2, TAU = 0.05, 0.9, 0.99, 1e-3
WEIGHTS = [2, 5, 3]
ROUNDS = 4


def _toy_updates(server_round: int) -> list[dict[str, np.ndarray]]:
    """Sites' updates on a toy vector problem: noisy steps towards a target."""
    rng = np.random.default_rng(server_round)
    direction = np.linspace(-1.0, 1.0, 7)
    return [
        {"w": (0.1 * direction + 0.05 * rng.standard_normal(7)).astype(np.float32)} for _ in WEIGHTS
    ]


def _reference(kind: str, x0: np.ndarray) -> list[np.ndarray]:
    """Reddi et al.'s server optimizer, written out step by step (Flower's indexing)."""
    x, m, v, trajectory = x0.astype(np.float64), np.zeros(7), np.zeros(7), []
    for t in range(1, ROUNDS + 1):
        delta = sum(
            w * u["w"].astype(np.float64) for u, w in zip(_toy_updates(t), WEIGHTS, strict=True)
        ) / sum(WEIGHTS)
        m = BETA_1 * m + (1 - BETA_1) * delta
        if kind == "adam":
            v = BETA_2 * v + (1 - BETA_2) * delta**2
            step = ETA * np.sqrt(1 - BETA_2 ** (t + 1)) / (1 - BETA_1 ** (t + 1))
        else:
            v = v - (1 - BETA_2) * delta**2 * np.sign(v - delta**2)
            step = ETA
        x = x + step * m / (np.sqrt(v) + TAU)
        trajectory.append(x.astype(np.float32).astype(np.float64))
        x = trajectory[-1]  # the global travels as float32 between rounds
    return trajectory


def _ours(strategy, x0, rounds=range(1, ROUNDS + 1)):
    x, trajectory = {"w": x0}, []
    for t in rounds:
        messages = send(strategy, x, t)
        replies = [
            reply(m, u, w) for m, u, w in zip(messages, _toy_updates(t), WEIGHTS, strict=True)
        ]
        x = to_numpy(strategy.aggregate_train(t, replies)[0])
        trajectory.append(x["w"])
    return trajectory


KINDS = [("adam", FedAdam, flower.FedAdam), ("yogi", FedYogi, flower.FedYogi)]
X0 = np.linspace(0.0, 0.6, 7).astype(np.float32)


@pytest.mark.parametrize(("kind", "ours", "_"), KINDS, ids=["fedadam", "fedyogi"])
def test_matches_reference_step_by_step(kind, ours, _):
    strategy = ours(eta=ETA, beta_1=BETA_1, beta_2=BETA_2, tau=TAU, min_available_nodes=3)
    for t, (got, want) in enumerate(zip(_ours(strategy, X0), _reference(kind, X0), strict=True)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"round {t + 1}")
    assert set(strategy.m_t) == set(strategy.v_t) == {"w"}


@pytest.mark.parametrize(("kind", "ours", "theirs"), KINDS, ids=["fedadam", "fedyogi"])
def test_matches_flowers_strategy_fed_full_weights(kind, ours, theirs):
    strategy = ours(eta=ETA, beta_1=BETA_1, beta_2=BETA_2, tau=TAU, min_available_nodes=3)
    mine = _ours(strategy, X0)
    reference = theirs(eta=ETA, beta_1=BETA_1, beta_2=BETA_2, tau=TAU, min_available_nodes=3)
    x = record({"w": X0})
    for t in range(1, ROUNDS + 1):
        messages = sorted(
            reference.configure_train(t, x, ConfigRecord(), FakeGrid([11, 12, 13])),
            key=lambda m: m.metadata.dst_node_id,
        )
        current = to_numpy(x)["w"]
        replies = [
            Message(
                RecordDict(
                    {
                        contract.ARRAYS: record({"w": current + u["w"]}),
                        contract.METRICS: MetricRecord({contract.NUM_EXAMPLES: w}),
                    }
                ),
                reply_to=m,
            )
            for m, u, w in zip(messages, _toy_updates(t), WEIGHTS, strict=True)
        ]
        x = reference.aggregate_train(t, replies)[0]
        np.testing.assert_allclose(mine[t - 1], to_numpy(x)["w"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("ours", [FedAdam, FedYogi], ids=["fedadam", "fedyogi"])
def test_resume_from_state_dict_is_bit_identical(ours, tmp_path):
    straight = ours(min_available_nodes=3)
    full = _ours(straight, X0)

    first = ours(min_available_nodes=3)
    _ours(first, X0, rounds=range(1, 3))
    np.savez(tmp_path / "state.npz", **first.state_dict())
    with np.load(tmp_path / "state.npz") as saved:
        state = {k: saved[k] for k in saved.files}
    assert {"round", "global/w", "m/w", "v/w"} <= set(state)

    resumed = ours(min_available_nodes=3)
    resumed.load_state_dict(state)
    rest = _ours(resumed, resumed.current_global["w"], rounds=range(3, ROUNDS + 1))
    for got, want in zip(rest, full[2:], strict=True):
        assert got.tobytes() == want.tobytes()


def test_server_optimizer_settings_are_checked():
    with pytest.raises(ConfigError, match="server-beta-1"):
        FedAdam(beta_1=1.0)
    with pytest.raises(ConfigError, match="server-eta"):
        FedYogi(eta=-0.1)
