"""The site's side of the LoRA-aware strategies, on the real tiny VLM and the real ClientApp.

FFA-LoRA freezes A and halves the LoRA upload; sites of different ranks train and their
updates aggregate with HetLoRA (zero-padding) and FLoRA (stacking) into a global of the
run's rank; FedProx's term changes the local update exactly as its gradient says.
"""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from lora_start import b_moved_off_zero

from client import app as client_app
from client.lora_site import at_rank, site_lora
from client.site_data import load_site
from fedvlm import contract
from fedvlm.adapter import (
    Adapter,
    adapter_nbytes,
    adapter_parameters,
    adapter_to_arrayrecord,
    arrayrecord_to_adapter,
    get_adapter_state,
    set_adapter_state,
)
from fedvlm.batching import encode, score
from fedvlm.config import NodeSettings, RunSettings
from fedvlm.errors import ConfigError
from fedvlm.lora_factors import exchanged_keys, factor_of, lora_pairs
from fedvlm.training import take
from fedvlm.vlm import load_peft_model
from simulations.in_process import over_the_wire
from strategies import build_strategy
from strategies.settings import StrategySettings

RUN_CONFIG = {
    "local-steps": 3,
    "batch-size": 4,
    "learning-rate": 0.01,
    "sim-examples-per-site": 12,
    "sim-val-examples-per-site": 4,
    "energy-tracking": False,
}
RUN = RunSettings.from_config(RUN_CONFIG)


pytestmark = pytest.mark.usefixtures("serverapp_identity")  # messages are built here


@pytest.fixture(scope="module")
def global_adapter() -> Adapter:
    """The run's initial adapter with B moved off zero, so A gets gradients from step 1."""
    model, _ = load_peft_model(RUN.base_model, RUN.lora)
    return b_moved_off_zero(get_adapter_state(model), seed=7)


def _context(node: int, partition: int, run_config=None, **node_config) -> Context:
    return Context(
        run_id=1,
        node_id=node,
        node_config={"partition-id": partition, "num-partitions": 2, **node_config},
        state=RecordDict(),
        run_config=dict(run_config or RUN_CONFIG),
    )


def _train_message(global_adapter: Adapter, node: int, **config) -> Message:
    record = ConfigRecord(
        {
            contract.SERVER_ROUND: 1,
            contract.LOCAL_STEPS: RUN.local_steps,
            contract.LEARNING_RATE: RUN.learning_rate,
            contract.BATCH_SIZE: RUN.batch_size,
            contract.SEED: 0,
            **config,
        }
    )
    content = RecordDict({contract.ARRAYS: adapter_to_arrayrecord(global_adapter)})
    content[contract.CONFIG] = record
    return Message(content, dst_node_id=node, message_type="train")


def _deliver(message: Message, context: Context) -> Message:
    """Through protobuf both ways, as Flower delivers it."""
    return over_the_wire(client_app.app(over_the_wire(message), context))


def _update(reply: Message) -> dict[str, np.ndarray]:
    assert not reply.has_error(), reply.error
    return {k: v.numpy() for k, v in reply.content[contract.ARRAYS].items()}


# --- FFA-LoRA -----------------------------------------------------------------------------


def test_ffa_lora_site_keeps_a_frozen_and_sends_only_b_and_the_projector(
    global_adapter, cached_peft_model
):
    model, _ = cached_peft_model(RUN.base_model, RUN.lora)
    plain = _deliver(_train_message(global_adapter, 5), _context(5, 0))
    plain_update = _update(plain)
    a_names = [k for k in global_adapter if factor_of(k) == "A"]
    assert max(np.abs(plain_update[k]).max() for k in a_names) > 0  # A trains when not frozen

    ffa = _deliver(
        _train_message(global_adapter, 5, **{contract.FREEZE_LORA_A: True}), _context(5, 0)
    )
    update = _update(ffa)
    trained = get_adapter_state(model)
    for name in a_names:  # A after local training is bit-identical to the global's
        assert torch.equal(trained[name], global_adapter[name]), name
    assert list(update) == exchanged_keys(global_adapter)
    assert max(np.abs(update[k]).max() for k in update if factor_of(k) == "B") > 0
    # The upload is the exchanged tensors only: half of the LoRA bytes, plus the projector.
    sent = ffa.content[contract.METRICS][contract.BYTES_UP]
    assert sent == adapter_nbytes({k: global_adapter[k] for k in update})
    lora_sent = sum(v.nbytes for k, v in update.items() if factor_of(k))
    lora_all = sum(t.numel() * 4 for k, t in global_adapter.items() if factor_of(k))
    assert 0.4 < lora_sent / lora_all < 0.6
    # Exactly the A factors are saved (a fixed share such as "< 0.7 of plain" depended on how
    # large the embedded base's projector is relative to its LoRA factors).
    a_bytes = adapter_nbytes({k: global_adapter[k] for k in a_names})
    assert sent == plain.content[contract.METRICS][contract.BYTES_UP] - a_bytes
    # The cached model is shared by later rounds: A must be trainable again after the round.
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_A" in n)


# --- heterogeneous ranks --------------------------------------------------------------------


def test_a_site_rank_above_the_run_rank_is_refused_naming_the_node_key(global_adapter):
    with pytest.raises(ConfigError) as err:
        client_app.train_update(
            _train_message(global_adapter, 5), _context(5, 0, **{"lora-rank": 16})
        )
    assert err.value.key == "lora-rank"


@pytest.mark.parametrize("name", ["hetlora", "flora"])
def test_sites_of_rank_4_and_8_train_and_aggregate_into_a_global_of_the_run_rank(
    name, global_adapter, cached_peft_model
):
    ranks = {21: 4, 22: 8}
    strategy = build_strategy(
        name,
        min_available_nodes=2,
        **StrategySettings.from_config(RUN_CONFIG).kwargs_for(name, global_rank=RUN.lora.rank),
    )
    grid = type("Nodes", (), {"get_node_ids": lambda self: list(ranks)})()
    config = ConfigRecord(
        {
            contract.LOCAL_STEPS: RUN.local_steps,
            contract.LEARNING_RATE: RUN.learning_rate,
            contract.BATCH_SIZE: RUN.batch_size,
            contract.SEED: 0,
        }
    )
    messages = strategy.configure_train(1, adapter_to_arrayrecord(global_adapter), config, grid)
    replies = [
        _deliver(
            m,
            _context(
                m.metadata.dst_node_id,
                i,
                {**RUN_CONFIG, "strategy": name},
                **{"lora-rank": ranks[m.metadata.dst_node_id]},
            ),
        )
        for i, m in enumerate(sorted(messages, key=lambda m: m.metadata.dst_node_id))
    ]
    updates = {r.metadata.src_node_id: _update(r) for r in replies}
    for node, update in updates.items():  # each site sends at its own rank
        for name_a, name_b in lora_pairs(update):
            assert update[name_a].shape == (ranks[node], global_adapter[name_a].shape[1])
            assert update[name_b].shape == (global_adapter[name_b].shape[0], ranks[node])
    # The rank-4 site trained with alpha scaled to its rank (same alpha / r as the run).
    small = load_peft_model(RUN.base_model, at_rank(RUN.lora, 4))[0].peft_config["default"]
    assert small.lora_alpha / small.r == RUN.lora.alpha / RUN.lora.rank

    new_global, _ = strategy.aggregate_train(1, replies)
    assert strategy.last_rejections == []
    got = {k: v.numpy() for k, v in new_global.items()}
    assert {k: v.shape for k, v in got.items()} == {
        k: tuple(t.shape) for k, t in global_adapter.items()
    }
    weights = {
        r.metadata.src_node_id: r.content[contract.METRICS][contract.NUM_EXAMPLES] for r in replies
    }
    total = sum(weights.values())
    for name_a, name_b in lora_pairs(global_adapter):
        a0, b0 = global_adapter[name_a].double().numpy(), global_adapter[name_b].double().numpy()
        if name == "hetlora":  # global + weighted mean of the zero-padded updates
            for key, rank_axis in ((name_a, 0), (name_b, 1)):
                start = global_adapter[key].double().numpy()
                expected = start.copy()
                for node, update in updates.items():
                    index = [slice(None)] * 2
                    index[rank_axis] = slice(0, ranks[node])
                    expected[tuple(index)] += weights[node] / total * update[key]
                np.testing.assert_allclose(got[key], expected, atol=1e-6)
        else:  # the best rank-8 approximation of the weighted mean of the sites' products
            product = sum(
                weights[n]
                / total
                * (b0[:, : ranks[n]] + updates[n][name_b])
                @ (a0[: ranks[n]] + updates[n][name_a])
                for n in updates
            )
            u, s, vt = np.linalg.svd(product)
            best = (u[:, :8] * s[:8]) @ vt[:8]
            np.testing.assert_allclose(
                got[name_b].astype(np.float64) @ got[name_a], best, atol=1e-5
            )
    # The coordinator's model of the run's rank and each site can load the new global.
    coordinator, _ = cached_peft_model(RUN.base_model, RUN.lora)
    set_adapter_state(coordinator, arrayrecord_to_adapter(new_global))
    client_app.train_update(
        _train_message(arrayrecord_to_adapter(new_global), 21),
        _context(21, 0, {**RUN_CONFIG, "strategy": name}, **{"lora-rank": 4}),
    )


def test_a_smaller_site_pads_its_update_when_the_coordinator_only_sums(
    global_adapter, cached_peft_model
):
    client_dp = {
        **RUN_CONFIG,
        "strategy": "hetlora",  # a smaller site rank needs a rank-aware strategy
        "dp-mode": "client",
        "dp-client-target-epsilon": 8.0,
        "dp-client-clip": 0.5,
    }
    reply = _deliver(
        _train_message(global_adapter, 5), _context(5, 0, client_dp, **{"lora-rank": 4})
    )
    update = _update(reply)
    assert {k: v.shape for k, v in update.items()} == {
        k: tuple(t.shape) for k, t in global_adapter.items()
    }
    for name_a, name_b in lora_pairs(update):  # components 4..8 were never trained here
        assert not update[name_a][4:].any() and not update[name_b][:, 4:].any()
    assert update[name_a][:4].any()
    norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in update.values()))
    assert norm <= 0.5 + 1e-6  # clipped to dp-client-clip


# --- FedProx --------------------------------------------------------------------------------


def _manual_prox_update(global_adapter: Adapter, mu: float, seed: int) -> dict[str, torch.Tensor]:
    """The client's local training written out: AdamW on loss grad + mu (w - w_global)."""
    model, processor = load_peft_model(RUN.base_model, RUN.lora)
    set_adapter_state(model, global_adapter)
    site = load_site(
        NodeSettings.from_config({"partition-id": 0, "num-partitions": 2}), RUN.simulation, RUN.seed
    )
    data = encode(processor, site.train)
    generator = torch.Generator().manual_seed(seed)
    live = adapter_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=RUN.learning_rate, weight_decay=0.0)
    model.train()
    for _ in range(RUN.local_steps):
        index = torch.randperm(len(site.train), generator=generator)[: RUN.batch_size]
        loss, _ = score(model, take(data, index))
        optimizer.zero_grad(set_to_none=True)
        loss.mean().backward()
        with torch.no_grad():  # d/dw of mu/2 ||w - w_ref||^2 = mu (w - w_ref)
            for key, param in live.items():
                param.grad += mu * (param - global_adapter[key])
        optimizer.step()
    model.eval()
    trained = get_adapter_state(model)
    return {k: trained[k] - global_adapter[k] for k in trained}


def test_fedprox_term_changes_the_local_update_as_its_gradient_says(
    global_adapter, cached_peft_model
):
    cached_peft_model(RUN.base_model, RUN.lora)  # _manual_prox_update trains the cached model
    mu = 2.0
    seed = RUN.seed + 100_003 * 1 + 0  # the client's seed for round 1, partition 0
    plain = _update(_deliver(_train_message(global_adapter, 5), _context(5, 0)))
    prox = _update(
        _deliver(_train_message(global_adapter, 5, **{contract.PROXIMAL_MU: mu}), _context(5, 0))
    )
    manual = _manual_prox_update(global_adapter, mu, seed)
    assert set(prox) == set(manual)
    for name in prox:
        np.testing.assert_allclose(prox[name], manual[name].numpy(), atol=2e-6, rtol=1e-5)
    # The term pulls toward the global: the update is shorter, and really differs.
    norm = lambda u: np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in u.values()))  # noqa: E731
    assert norm(prox) < norm(plain)
    assert max(float(np.abs(prox[k] - plain[k]).max()) for k in prox) > 1e-4


def test_a_smaller_site_rank_under_a_same_rank_strategy_is_refused_naming_both_keys():
    """The README's own `--node-config lora-rank=4` under the default fedavg used to end in
    "no valid update arrived" with no reason anywhere; now the site refuses, naming
    `lora-rank` and `strategy` (removing the check in `site_lora` fails this test)."""
    with pytest.raises(ConfigError, match=r"lora-rank=4 .*strategy hetlora or flora.*'fedavg'"):
        site_lora(RUN.lora, {"lora-rank": 4}, "fedavg")
    assert site_lora(RUN.lora, {"lora-rank": 4}, "hetlora").rank == 4
    assert site_lora(RUN.lora, {}, "fedavg").rank == RUN.lora.rank
