"""Client-level DP at the coordinator: unit weights, clip enforced, calibrated noise."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from coordinator.privacy_guard import PrivacyGuard
from fedvlm import contract
from fedvlm.adapter import adapter_to_arrayrecord
from fedvlm.config import RunSettings
from privacy.client_level import ClientLevelDP, clip_update
from privacy.settings import PrivacySettings
from strategies import FedAvg
from tests.dp_helpers import gaussian_rounds_epsilon

CONFIG = {
    "dp-mode": "client",
    "dp-client-target-epsilon": 8.0,
    "dp-client-noise-multiplier": 1.3,
    "dp-client-clip": 0.2,
    "dp-client-delta": 0.01,
}


class _Nodes:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


def _reply(node: int, update: dict[str, torch.Tensor], examples: int) -> Message:
    content = RecordDict(
        {
            contract.ARRAYS: adapter_to_arrayrecord(update),
            contract.METRICS: MetricRecord({contract.NUM_EXAMPLES: examples}),
        }
    )
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=node, message_type="train"))


def test_clip_update_scales_to_the_bound_and_keeps_small_updates():
    big = {"a": torch.full((3, 4), 1.0), "b": torch.full((5,), -2.0)}
    clipped, norm = clip_update(big, 0.5)
    assert norm == pytest.approx(np.sqrt(12 + 20))
    total = torch.sqrt(sum((t.double() ** 2).sum() for t in clipped.values()))
    assert float(total) == pytest.approx(0.5, rel=1e-6)
    assert torch.allclose(clipped["a"] / clipped["b"][0], big["a"] / big["b"][0])  # direction
    small, _ = clip_update({"a": torch.full((2,), 0.1)}, 0.5)
    assert torch.equal(small["a"], torch.full((2,), 0.1))


def test_sites_weigh_one_each_and_an_unclipped_update_is_rejected(serverapp_identity):
    """Example counts 10 and 1000 must not weight the mean: the sensitivity is C per site."""
    settings = PrivacySettings.from_config(CONFIG)
    strategy = FedAvg(min_train_nodes=2, min_available_nodes=2)
    guard = PrivacyGuard(settings, RunSettings(num_rounds=3), strategy)
    global_adapter = {"w": torch.zeros(4, 3)}
    strategy.configure_train(
        1, adapter_to_arrayrecord(global_adapter), ConfigRecord(), _Nodes([1, 2, 3])
    )
    guard.before_round(_Nodes([1, 2, 3]))
    guard.client.rng = np.random.default_rng(5)  # the noise this round, known to the test
    noise = np.random.default_rng(5).normal(0.0, 1.3 * 0.2, size=(4, 3))
    first = clip_update({"w": torch.full((4, 3), 1.0)}, 0.2)[0]
    second = clip_update({"w": torch.full((4, 3), -0.01)}, 0.2)[0]
    unclipped = {"w": torch.full((4, 3), 0.5)}  # norm 1.73 > C: this site did not clip
    new_global, _ = guard.aggregate(
        1, [_reply(1, first, 10), _reply(2, second, 1000), _reply(3, unclipped, 50)]
    )
    expected = ((first["w"] + second["w"]).numpy() + noise) / 2
    assert np.allclose(new_global["w"].numpy(), expected, atol=1e-6)
    assert [(r.node_id, r.check) for r in strategy.last_rejections] == [(3, "norm")]
    assert guard.client.history.steps == 1  # one release accounted


def test_client_level_noise_has_the_calibrated_std_on_the_mean():
    settings = PrivacySettings.from_config(CONFIG).client
    dp = ClientLevelDP(settings, planned_rounds=100, rng=np.random.default_rng(0))
    sites = 5
    dp.prepare_round(10)
    zero = {"a": np.zeros((300, 200)), "b": np.zeros(40_000)}
    draws = []
    for _ in range(5):
        noisy = dp.add_noise(zero, sites)
        draws.append(np.concatenate([v.ravel() for v in noisy.values()]) / sites)
    samples = np.concatenate(draws)
    expected = 1.3 * 0.2 / sites  # z * C / m on the mean
    assert float(np.std(samples)) == pytest.approx(expected, rel=0.05)
    assert abs(float(np.mean(samples))) < 0.01 * expected  # centred
    assert dp.history.steps == 5


def test_calibrated_client_noise_spends_the_budget_over_the_planned_rounds():
    """Checked against dp_accounting at q = 1, not against the function the calibration
    bisected. Mutation: calibrate or account at q = sampled/total -> the independent ε
    of the mechanism run passes the budget and this fails."""
    settings = PrivacySettings.from_config(
        {**CONFIG, "dp-client-noise-multiplier": 0.0, "dp-client-target-epsilon": 4.0}
    ).client
    dp = ClientLevelDP(settings, planned_rounds=20, rng=np.random.default_rng(1))
    dp.prepare_round(8)
    independent = gaussian_rounds_epsilon(dp.noise_multiplier, 20, settings.delta)
    assert 0.95 * 4.0 <= independent <= 4.0 * 1.001
    assert dp.projected_epsilon() == pytest.approx(independent, rel=0.01)
