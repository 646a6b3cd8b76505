"""Coordinator checkpoints: exact round trip, RNG continuity, refusal of a changed run."""

import random

import numpy as np
import pytest
import torch

from coordinator.checkpoint import (
    CHECKPOINT,
    check_same_run,
    load_checkpoint,
    open_resumed,
    save_checkpoint,
)
from coordinator.ledger import append_round, read_ledger
from fedvlm.errors import ConfigError
from fedvlm.ledger_schema import LedgerRow
from strategies import build_strategy

RUN_CONFIG = {"num-server-rounds": 3, "seed": 7, "strategy": "fedadam", "learning-rate": 0.01}


def _adapter(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "base_model.layer.lora_A.weight": torch.randn(4, 16, generator=g),
        "base_model.layer.lora_B.weight": torch.randn(16, 4, generator=g),
    }


def _stepped_strategy(adapter: dict[str, torch.Tensor]):
    """A FedAdam with non-trivial optimizer moments (one real aggregation step)."""
    strategy = build_strategy("fedadam")
    strategy.current_global = {k: v.numpy().copy() for k, v in adapter.items()}
    update = {k: np.full(v.shape, 0.01, dtype=np.float64) for k, v in adapter.items()}
    strategy.apply_update_sum(1, update, 1.0)
    return strategy


def test_round_trip_is_exact_and_restores_every_rng(tmp_path):
    adapter = _adapter(0)
    strategy = _stepped_strategy(adapter)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path, 4, adapter, strategy, RUN_CONFIG, extra={"epsilon": 1.5})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    checkpoint = load_checkpoint(tmp_path)
    fresh = build_strategy("fedadam")
    checkpoint.restore(fresh)

    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert checkpoint.server_round == 4
    assert list(checkpoint.adapter) == list(adapter)
    for name, tensor in adapter.items():
        assert torch.equal(checkpoint.adapter[name], tensor)
    saved, restored = strategy.state_dict(), fresh.state_dict()
    assert set(saved) == set(restored)
    for key, value in saved.items():
        np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(value), err_msg=key)
    assert checkpoint.extra == {"epsilon": 1.5}
    assert checkpoint.run_config == RUN_CONFIG
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temp file left


def test_resume_refuses_changed_settings_but_allows_more_rounds():
    check_same_run(RUN_CONFIG, {**RUN_CONFIG, "num-server-rounds": 5, "resume": "x"})
    with pytest.raises(ConfigError, match="learning-rate"):
        check_same_run(RUN_CONFIG, {**RUN_CONFIG, "learning-rate": 0.02})


def test_open_resumed_names_the_folder_and_requires_a_checkpoint(tmp_path):
    assert open_resumed({"resume": ""}) is None
    with pytest.raises(ConfigError, match="does not exist"):
        open_resumed({"resume": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="no checkpoint.npz"):
        open_resumed({"resume": str(tmp_path)})

    adapter = _adapter(1)
    append_round(tmp_path, LedgerRow(round=1, energy={"cumulative": 1.0}))
    save_checkpoint(tmp_path, 1, adapter, _stepped_strategy(adapter), RUN_CONFIG)
    # Killed after round 2's ledger row, before its checkpoint: round 2 will be repeated.
    append_round(tmp_path, LedgerRow(round=2, energy={"cumulative": 2.0}))
    folder, checkpoint = open_resumed(
        {**RUN_CONFIG, "resume": tmp_path.name, "run-dir": str(tmp_path.parent)}
    )
    assert folder == tmp_path.resolve()
    assert checkpoint.server_round == 1
    assert read_ledger(tmp_path) == [{"round": 1, "energy": {"cumulative": 1.0}}]
