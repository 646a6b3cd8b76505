"""Secure aggregation wired into the apps, in one process: the real ClientApp handlers
(training included) behind `simulations.in_process.InProcessGrid`, which delivers messages
the way Flower does (through protobuf, with each node's `context.state` kept between
messages), driven by the coordinator's `secure_train_phase`.
"""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import app as client_app
from client.secure_aggregation import register
from coordinator.ledger import read_ledger
from coordinator.liveness import NotEnoughSitesError
from coordinator.secure_phase import secure_train_phase
from coordinator.site_evaluation import site_names
from fedvlm import contract
from fedvlm.adapter import adapter_to_arrayrecord, get_adapter_state
from fedvlm.config import RunSettings
from fedvlm.energy import EnergyMeter, EnergySettings
from fedvlm.errors import ConfigError
from fedvlm.vlm import load_peft_model
from privacy.client_level import ClientLevelDP, update_norm
from privacy.secagg.settings import SecureAggregationSettings
from privacy.settings import PrivacySettings
from simulations.in_process import InProcessGrid, run_coordinator
from strategies import FedAvg

NODES = [101, 202, 303, 404]
RUN_CONFIG = {
    "secure-aggregation": True,
    # Stated: no site colludes with the coordinator and one of the 4 may drop out, which
    # gives the complete graph with threshold 2 (one dropout tolerated). With the default
    # one colluding site no dropout of 4 can be survived (test_secagg_settings).
    "secagg-corrupt-fraction": 0.0,
    "secagg-dropout-fraction": 0.25,
    "secagg-clip": 5.0,
    "local-steps": 2,
    "batch-size": 4,
    "sim-examples-per-site": 12,
    "sim-val-examples-per-site": 4,
    "energy-tracking": False,
}


pytestmark = pytest.mark.usefixtures("serverapp_identity")  # messages are built here


class LocalGrid(InProcessGrid):
    """The four sites of ``NODES``; ``fail`` maps a message type to nodes whose ClientApp
    crashes on it (they never answer it: a dropout at that stage).
    """

    def __init__(
        self,
        app: ClientApp,
        run_config: dict,
        fail: dict[str, set[int]] | None = None,
        node_config: dict | None = None,
    ):
        super().__init__(app, run_config, [node_config or {}] * len(NODES), NODES)
        self.fail = fail or {}

    def deliver(self, message: Message) -> Message | None:
        if message.metadata.dst_node_id in self.fail.get(message.metadata.message_type, set()):
            return None
        return super().deliver(message)


@pytest.fixture(scope="module")
def global_adapter():
    run = RunSettings.from_config(RUN_CONFIG)
    model, _ = load_peft_model(run.base_model, run.lora)
    return get_adapter_state(model)


def _train_config() -> ConfigRecord:
    return ConfigRecord(
        {
            contract.LOCAL_STEPS: 2,
            contract.LEARNING_RATE: 0.003,
            contract.BATCH_SIZE: 4,
            contract.SEED: 0,
        }
    )


def _capturing_app() -> tuple[ClientApp, dict[int, tuple]]:
    """A ClientApp with the real stage handlers and training, remembering each update."""
    seen: dict[int, tuple] = {}

    def train_update(message, context):
        update, metrics = client_app.train_update(message, context)
        seen[context.node_id] = (update, dict(metrics))
        return update, metrics

    app = ClientApp()
    register(app, train_update, client_app._meter)
    return app, seen


def _strategy():
    return FedAvg(min_train_nodes=2, min_available_nodes=2)


def _phase(grid, global_adapter, run_config=RUN_CONFIG, **kwargs):
    """One secure round on ``grid``; the coordinator's settings come from ``run_config``."""
    return secure_train_phase(
        _strategy(),
        grid,
        1,
        global_adapter,
        _train_config(),
        timeout=10,
        min_replies=2,
        meter=EnergyMeter(EnergySettings(enabled=False)),
        settings=SecureAggregationSettings.from_config(run_config),
        **kwargs,
    )


def _plain_fedavg(global_adapter, seen, nodes) -> dict[str, np.ndarray]:
    """What plain FedAvg makes of the same updates, sent as ordinary train replies."""
    strategy = _strategy()
    strategy.configure_train(1, adapter_to_arrayrecord(global_adapter), _train_config(), _Nodes())
    replies = []
    for node in nodes:
        update, metrics = seen[node]
        content = RecordDict(
            {
                contract.ARRAYS: adapter_to_arrayrecord(update),
                contract.METRICS: MetricRecord(metrics),
            }
        )
        sent = Message(RecordDict(), dst_node_id=node, message_type="train")
        replies.append(Message(content, reply_to=sent))
    new_global, _ = strategy.aggregate_train(1, replies)
    assert new_global is not None
    return {k: v.numpy() for k, v in new_global.items()}


class _Nodes:
    def get_node_ids(self):
        return NODES


def test_secure_round_applies_the_fedavg_aggregate_within_the_quantisation_bound(
    global_adapter,
):
    app, seen = _capturing_app()
    grid = LocalGrid(app, RUN_CONFIG)
    outcome = _phase(grid, global_adapter)

    assert sorted(m.metadata.src_node_id for m in outcome.replies) == NODES
    assert outcome.dropped == []
    # Only masked integers and scalars left the sites: no reply carries an adapter.
    assert all(contract.ARRAYS not in m.content for m in outcome.replies)
    # Each masked input names its site, as a plain train reply does (`site-<partition>`
    # here; without the name the coordinator could show only the bare node id).
    assert site_names(outcome.replies) == {str(n): f"site-{i}" for i, n in enumerate(NODES)}
    for update, _ in seen.values():  # so the sites did not clip: FedAvg is the reference
        assert np.sqrt(sum(float((t.double() ** 2).sum()) for t in update.values())) < 5.0
    expected = _plain_fedavg(global_adapter, seen, NODES)
    config = SecureAggregationSettings.from_config(RUN_CONFIG).round_config(len(NODES))
    got = {k: v.numpy() for k, v in outcome.new_global.items()}
    assert set(got) == set(expected)
    moved = max(float(np.abs(expected[k] - global_adapter[k].numpy()).max()) for k in got)
    assert moved > 50 * config.step  # the round really changed the adapter
    for name in got:
        # Mean error <= one quantisation step, plus float32 rounding of the adapter.
        bound = config.step + 1e-6 * (1 + np.abs(expected[name]))
        assert np.all(np.abs(got[name] - expected[name]) <= bound), name
    # Weighted by example count, and each site's scalars arrived for the ledger.
    losses = {n: seen[n][1][contract.TRAIN_LOSS] for n in NODES}
    examples = {n: seen[n][1][contract.NUM_EXAMPLES] for n in NODES}
    mean_loss = sum(losses[n] * examples[n] for n in NODES) / sum(examples.values())
    assert outcome.metrics[contract.TRAIN_LOSS] == pytest.approx(mean_loss)
    length = sum(t.numel() for t in global_adapter.values())
    for reply in outcome.replies:
        assert reply.content[contract.METRICS][contract.BYTES_UP] == (length + 1) * 4  # uint32
        assert outcome.bytes_up[str(reply.metadata.src_node_id)] > (length + 1) * 4
    assert grid.sent.count("train.secagg_masked_input") == len(NODES)
    assert "train" not in grid.sent


def test_a_site_that_crashes_while_training_is_left_out_of_the_sum(global_adapter):
    app, seen = _capturing_app()
    grid = LocalGrid(app, RUN_CONFIG, fail={"train.secagg_masked_input": {202}})
    outcome = _phase(grid, global_adapter)
    assert outcome.dropped == [202]
    assert sorted(m.metadata.src_node_id for m in outcome.replies) == [101, 303, 404]
    expected = _plain_fedavg(global_adapter, seen, [101, 303, 404])
    for name, array in outcome.new_global.items():
        assert np.allclose(array.numpy(), expected[name], atol=1e-5), name


def test_too_many_dropouts_stop_the_round_with_a_clear_error(global_adapter):
    app, _ = _capturing_app()
    grid = LocalGrid(app, RUN_CONFIG, fail={"query.secagg_share_keys": {101, 202, 303}})
    with pytest.raises(NotEnoughSitesError, match="secure aggregation cannot complete"):
        _phase(grid, global_adapter)


def test_sites_refuse_a_coordinator_that_lowers_the_threshold(global_adapter, caplog):
    app, seen = _capturing_app()
    weaker = {**RUN_CONFIG, "secagg-degree": 2, "secagg-threshold": 2}
    sites = LocalGrid(app, RUN_CONFIG)  # the sites' own run config: complete graph, t = 2
    with pytest.raises(NotEnoughSitesError):
        _phase(sites, global_adapter, weaker)
    assert seen == {}  # nobody trained, nothing was masked
    refusals = [r for r in caplog.records if "refuses secure-aggregation stage" in r.message]
    assert len(refusals) == len(NODES)
    assert "secagg-degree" in refusals[0].message


def test_a_deployed_site_holds_the_coordinator_to_its_own_threat_model(
    global_adapter, tmp_path, caplog
):
    """In a deployment the run config is the coordinator's, so the sites' copy of it states
    whatever the coordinator states: here that no site colludes (γ = 0), which gives 4 sites
    the complete graph with threshold 2, where one colluding neighbour suffices for a split
    view (test_secagg_split_view). A deployed site holds the offered parameters to its own
    node config, else to the default γ = 0.05, and refuses before drawing a key; simulated
    sites (the other tests here) take their operator's run config.

    Mutation tried: the ``SiteFloor.of_site(...).check(offered)`` line removed from
    ``client.secure_aggregation._setup`` -> this test fails (every site sets up under the
    coordinator's γ = 0 and goes on to the masked-input stage).
    """
    app, seen = _capturing_app()
    deployed = {"data-path": str(tmp_path)}  # a site with its own data: a deployed one
    with pytest.raises(NotEnoughSitesError):
        _phase(LocalGrid(app, RUN_CONFIG, node_config=deployed), global_adapter)
    assert seen == {}
    refusals = [r for r in caplog.records if "refuses secure-aggregation stage" in r.message]
    assert len(refusals) == len(NODES)
    assert "secagg_setup" in refusals[0].message
    assert "secagg-corrupt-fraction = 0.05" in refusals[0].message


def test_a_site_refuses_to_send_a_plain_update_when_secure_aggregation_is_on(global_adapter):
    grid = LocalGrid(client_app.app, RUN_CONFIG)
    message = Message(
        RecordDict(
            {
                contract.ARRAYS: adapter_to_arrayrecord(global_adapter),
                contract.CONFIG: ConfigRecord({**_train_config(), contract.SERVER_ROUND: 1}),
            }
        ),
        dst_node_id=101,
        message_type="train",
    )
    [reply] = grid.send_and_receive([message])
    assert reply.has_error()
    assert "secure-aggregation = true" in reply.error.reason


def _coordinator_config(tmp_path, **overrides) -> dict:
    return {
        **RUN_CONFIG,
        "run-dir": str(tmp_path),
        "run-name": "secure",
        "min-train-nodes": len(NODES),
        "min-available-nodes": len(NODES),
        "node-wait-timeout": 5.0,
        **overrides,
    }


def test_a_non_linear_strategy_is_refused_at_start_up_naming_the_keys(tmp_path):
    grid = LocalGrid(client_app.app, RUN_CONFIG)
    with pytest.raises(ConfigError, match="strategy") as err:
        run_coordinator(grid, _coordinator_config(tmp_path, strategy="median"))
    assert "secure-aggregation" in str(err.value)
    assert grid.sent == []  # refused before any round


def test_a_federation_with_secure_aggregation_learns(tmp_path, global_adapter):
    # Deterministic local training: the same run in the clear goes 0.56 -> 0.68.
    run_config = {
        **RUN_CONFIG,
        "local-steps": 16,
        "sim-examples-per-site": 64,
        "heldout-examples": 96,
        "num-server-rounds": 3,
    }
    grid = LocalGrid(client_app.app, run_config)
    run_coordinator(grid, _coordinator_config(tmp_path, **run_config))
    ledger = read_ledger(tmp_path / "secure")
    assert [row["round"] for row in ledger] == [0, 1, 2, 3]
    assert ledger[-1]["heldout_accuracy"] > ledger[0]["heldout_accuracy"] + 0.05
    assert "train" not in grid.sent and grid.sent.count("train.secagg_masked_input") == 12
    masked_bytes = (sum(t.numel() for t in global_adapter.values()) + 1) * 4
    for row in ledger[1:]:
        assert row["sites"] == NODES and row["dropped"] == []
        assert row["bytes_up"] > len(NODES) * masked_bytes  # masked vectors + key exchange
        assert row["train_loss"] is not None
        # The round's graph and the threat model it was derived from (stated in RUN_CONFIG).
        assert {k: row["secagg"][k] for k in ("degree", "threshold", "corrupt", "dropouts")} == {
            "degree": 3,
            "threshold": 2,
            "corrupt": 0,
            "dropouts": 1,
        }
        assert row["secagg"]["corrupt_fraction"] == 0.0 and row["secagg"]["sigma"] == 40
        assert row["secagg"]["privacy_failure"] <= 2.0**-40
    card = (tmp_path / "secure" / "adapter" / "README.md").read_text()
    assert "## Secure aggregation" in card and "k = 3, t = 2" in card
    assert "No site was assumed to collude with the coordinator" in card


def test_the_update_sum_is_refused_unless_finite(global_adapter):
    strategy = _strategy()
    strategy.configure_train(1, adapter_to_arrayrecord(global_adapter), _train_config(), _Nodes())
    bad = {k: np.full(tuple(v.shape), np.nan, np.float32) for k, v in global_adapter.items()}
    with pytest.raises(Exception, match="finite"):
        strategy.apply_update_sum(1, bad, 3.0)


def test_client_level_dp_composes_unit_weights_clipped_before_masking_noise_on_the_sum(
    global_adapter,
):
    run_config = {
        **RUN_CONFIG,
        "dp-mode": "client",
        "dp-client-clip": 0.5,  # below every update's norm here: all are clipped
        "dp-client-noise-multiplier": 0.1,
        "dp-client-target-epsilon": 1000.0,
        "dp-client-delta": 0.1,
    }
    app, seen = _capturing_app()
    grid = LocalGrid(app, run_config)
    client_settings = PrivacySettings.from_config(run_config).client
    dp = ClientLevelDP(client_settings, planned_rounds=1, rng=np.random.default_rng(7))
    dp.prepare_round(len(NODES))
    summed_sites = []

    def add_noise(update_sum, num_sites):
        summed_sites.append(num_sites)
        return dp.add_noise(update_sum, num_sites)

    outcome = _phase(grid, global_adapter, run_config, add_noise=add_noise)
    assert summed_sites == [len(NODES)] and dp.history.steps == 1
    # The same noise, drawn again in the same (sorted) order, on the clear sum of the
    # clipped updates, each with weight 1 whatever its example count.
    replay = ClientLevelDP(client_settings, planned_rounds=1, rng=np.random.default_rng(7))
    replay.noise_multiplier = dp.noise_multiplier
    names = sorted(global_adapter)
    zeros = {n: np.zeros(tuple(global_adapter[n].shape)) for n in names}
    noise = replay.add_noise(zeros, len(NODES))
    config = SecureAggregationSettings.from_config(run_config).round_config(
        len(NODES), uniform_weights=True
    )
    assert config.max_weight == 1
    for name in names:
        updates = [seen[n][0][name].double().numpy() for n in NODES]
        norms = [update_norm(seen[n][0]) for n in NODES]
        assert max(norms) <= 0.5 * (1 + 1e-6)
        expected = global_adapter[name].double().numpy() + (sum(updates) + noise[name]) / len(NODES)
        got = outcome.new_global[name].numpy()
        assert np.all(np.abs(got - expected) <= config.step + 1e-6 * (1 + np.abs(expected)))
