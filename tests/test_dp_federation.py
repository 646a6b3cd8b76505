"""Differential privacy through the real round loop: the coordinator's ServerApp main and
the real ClientApp (training included), joined by `simulations.in_process.InProcessGrid`,
which passes messages through Flower's protobuf serialisation and keeps each node's
`context.state` between messages, as a deployment does.
"""

import pytest

from client import app as client_app
from coordinator.ledger import read_ledger
from coordinator.privacy_guard import PrivacyGuard
from fedvlm.config import RunSettings
from fedvlm.data.imagefolder import write_imagefolder
from fedvlm.data.partition import synthetic_site
from fedvlm.errors import ConfigError
from fedvlm.vlm import initial_adapter
from privacy.accounting import PrivacyHistory
from privacy.dp_sgd import poisson_sample_rate
from privacy.settings import PrivacySettings
from privacy.signal import MIN_SNR
from simulations.in_process import InProcessGrid, run_coordinator
from simulations.scenario import Scenario
from strategies import FedAvg
from tests.dp_helpers import gaussian_rounds_epsilon, poisson_gaussian_epsilon

NODES = [11, 22]
SITES = [{}] * len(NODES)
RESUMED_NODES = [77, 88]  # a resumed simulation draws new node ids; the partitions stay
RUN_CONFIG = {
    "num-server-rounds": 3,
    "local-steps": 2,
    "batch-size": 4,
    "sim-examples-per-site": 12,
    "sim-val-examples-per-site": 4,
    "heldout-examples": 16,
    "min-train-nodes": 2,
    "min-available-nodes": 2,
    "node-wait-timeout": 5.0,
    "energy-tracking": False,
    "run-name": "dp",
}


class CrashError(Exception):
    """The coordinator process dies (a test stand-in for a kill)."""


class CrashingGrid(InProcessGrid):
    """Kills the coordinator when it sends its ``crash_at_train``-th batch of train messages."""

    def __init__(self, run_config: dict, crash_at_train: int) -> None:
        super().__init__(client_app.app, run_config, SITES, NODES)
        self.crash_at_train = crash_at_train
        self.train_batches = 0

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.train_batches += 1
            if self.train_batches == self.crash_at_train:
                raise CrashError
        return super().send_and_receive(messages, timeout)


def _run(tmp_path, grid_config: dict, **overrides) -> list[dict]:
    config = {**RUN_CONFIG, "run-dir": str(tmp_path), **grid_config, **overrides}
    run_coordinator(InProcessGrid(client_app.app, config, SITES, NODES), config)
    return read_ledger(tmp_path / config["run-name"])


def _epsilon(noise: float, steps: int) -> float:
    history = PrivacyHistory("prv")
    history.add(noise, poisson_sample_rate(12, 4), steps)
    return history.epsilon(1e-5)


def test_budget_exhaustion_refuses_the_round_records_why_and_ends_cleanly(tmp_path, capsys):
    # Round 1 (2 steps per site) fits the budget, round 2 would not.
    budget = (_epsilon(1.0, 2) + _epsilon(1.0, 4)) / 2
    dp = {"dp-mode": "sample", "dp-noise-multiplier": 1.0, "dp-target-epsilon": budget}
    ledger = _run(tmp_path, dp)

    assert [row["round"] for row in ledger] == [0, 1, 2]
    trained, stopped = ledger[1], ledger[2]
    assert trained["sites"] == NODES
    assert trained["privacy"]["unit"] == "example"
    assert trained["privacy"]["epsilon"] == pytest.approx(_epsilon(1.0, 2), rel=1e-6)
    assert trained["privacy"]["epsilon"] <= budget
    assert set(trained["privacy"]["sites"]) == {"0", "1"}
    assert trained["privacy"]["steps"] == 2 and trained["privacy"]["noise_multiplier"] == 1.0
    # Round 2: the coordinator's records show no site can train: stopped before sending.
    assert stopped["sites"] == [] and "heldout_accuracy" not in stopped
    assert "no site can train within its privacy budget" in stopped["stopped"]
    assert sorted(r["site"] for r in stopped["privacy"]["refused"]) == [0, 1]
    assert all("dp-target-epsilon" in r["reason"] for r in stopped["privacy"]["refused"])
    assert stopped["privacy"]["epsilon"] == trained["privacy"]["epsilon"]  # unchanged
    assert (tmp_path / "dp" / "adapter" / "adapter_config.json").is_file()  # final adapter
    assert "privacy budget exhausted, run ends" in capsys.readouterr().out

    # Resumed by a new federation (new node ids, empty node states): the coordinator cannot
    # tell which node is which site, so it sends round 2; each site, handed its recorded
    # account, refuses before training, and the run ends again with the sites' reasons.
    config = {**RUN_CONFIG, "run-dir": str(tmp_path), **dp, "resume": "dp"}
    run_coordinator(InProcessGrid(client_app.app, config, SITES, RESUMED_NODES), config, run_id=2)
    again = read_ledger(tmp_path / "dp")
    assert [row["round"] for row in again] == [0, 1, 2]
    refused = again[2]["privacy"]["refused"]
    assert sorted((r["node_id"], r["site"]) for r in refused) == [(77, 0), (88, 1)]
    assert all("Refusing to train" in r["reason"] for r in refused)
    assert again[2]["privacy"]["epsilon"] == trained["privacy"]["epsilon"]


def test_a_resumed_run_continues_epsilon_instead_of_restarting_at_zero(tmp_path):
    dp = {"dp-mode": "sample", "dp-target-epsilon": 30.0}
    whole = _run(tmp_path, dp, **{"run-name": "whole"})

    config = {**RUN_CONFIG, "run-dir": str(tmp_path), **dp, "run-name": "cut"}
    with pytest.raises(CrashError):
        run_coordinator(CrashingGrid(config, crash_at_train=3), config)
    assert [row["round"] for row in read_ledger(tmp_path / "cut")] == [0, 1, 2]
    # A new federation process: new node ids, empty node states; the partitions are the same.
    resumed_config = {**config, "resume": "cut"}
    fresh = InProcessGrid(client_app.app, resumed_config, SITES, RESUMED_NODES)
    run_coordinator(fresh, resumed_config, run_id=2)
    cut = read_ledger(tmp_path / "cut")

    assert [row["round"] for row in cut] == [0, 1, 2, 3]
    for key in ("epsilon", "steps", "noise_multiplier", "projected_epsilon"):
        assert cut[3]["privacy"][key] == whole[3]["privacy"][key], key
    assert cut[3]["privacy"]["steps"] == 6
    assert cut[3]["privacy"]["epsilon"] > cut[2]["privacy"]["epsilon"] > 0
    # The calibrated noise spends the budget exactly at the planned end.
    assert 0.95 * 30.0 <= cut[3]["privacy"]["epsilon"] <= 30.0


def test_client_level_dp_reports_a_site_level_epsilon_and_stops_when_spent(tmp_path):
    dp = {
        "dp-mode": "client",
        "dp-client-clip": 0.05,
        "dp-client-noise-multiplier": 0.5,
        "dp-client-delta": 0.01,
    }
    # ε of one round at q = 1 and z = 0.5 is between 2 and 3 times less than that of two.
    history = PrivacyHistory("prv")
    history.add(0.5, 1.0, 1)
    one = history.epsilon(0.01)
    history.add(0.5, 1.0, 1)
    two = history.epsilon(0.01)
    ledger = _run(tmp_path, dp, **{"dp-client-target-epsilon": (one + two) / 2})

    assert [row["round"] for row in ledger] == [0, 1, 2]
    block = ledger[1]["privacy"]
    assert block["unit"] == "site" and block["sample_rate"] == 1.0 and block["steps"] == 1
    assert block["epsilon"] == pytest.approx(one, rel=1e-6)
    assert block["noise_std_on_sum"] == pytest.approx(0.025)
    assert "dp-client-target-epsilon" in ledger[2]["stopped"]


def test_client_level_dp_refuses_a_strategy_that_needs_individual_updates(tmp_path):
    dp = {"dp-mode": "client", "dp-client-target-epsilon": 8.0, "dp-client-delta": 0.01}
    with pytest.raises(ConfigError, match="strategy") as err:
        _run(tmp_path, dp, strategy="median")
    assert "client-level DP" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"dp-mode": "sample"}, "dp-target-epsilon"),
        ({"dp-mode": "sample", "dp-target-epsilon": -1.0}, "dp-target-epsilon"),
        (
            {"dp-mode": "sample", "dp-target-epsilon": 8.0, "dp-max-grad-norm": 0.0},
            "dp-max-grad-norm",
        ),
        (
            {"dp-mode": "client", "dp-client-target-epsilon": 8.0, "dp-client-clip": 0.0},
            "dp-client-clip",
        ),
        ({"dp-mode": "sample", "dp-target-epsilon": 8.0, "dp-delta": 1.0}, "dp-delta"),
        ({"dp-mode": "sample", "dp-target-epsilon": 8.0, "dp-accountant": "gdp"}, "dp-accountant"),
        ({"dp-mode": "local"}, "dp-mode"),
        ({"dp-mode": "sample", "dp-target-epsilon": 8.0, "strategy": "fedprox"}, "strategy"),
        # δ >= 1/n is found by the sites (n = 12 examples each): the run stops, nothing released.
        ({"dp-mode": "sample", "dp-target-epsilon": 8.0, "dp-delta": 0.1}, "dp-delta"),
        # δ >= 1/(number of sites) at the client level.
        (
            {"dp-mode": "client", "dp-client-target-epsilon": 8.0, "dp-client-delta": 0.5},
            "dp-client-delta",
        ),
    ],
)
def test_misconfiguration_is_an_error_naming_the_key_before_anything_is_released(
    tmp_path, overrides, key
):
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, overrides)
    assert err.value.key == key
    rows = read_ledger(tmp_path / "dp")
    assert all(row["round"] == 0 for row in rows)  # no round was ever recorded


def _sites_of_sizes(root, sizes: list[int]) -> list[dict]:
    """Node configs of sites holding ``sizes`` training examples each (imagefolders)."""
    configs = []
    for i, n in enumerate(sizes):
        site = synthetic_site(
            i, len(sizes), n_train=n, n_val=4, label_alpha=1.0, acquisition_skew=0.0, seed=7
        )
        folder = write_imagefolder({"train": site.train, "validation": site.val}, root / f"s{i}")
        configs.append({"data-path": str(folder)})
    return configs


# Under secure aggregation a refusal is a dropout of 1 of 4: stated (no colluding site,
# dropout fraction 0.25) so the complete graph with threshold 2 survives it.
SECURE_ONE_DROPOUT = {
    "secure-aggregation": True,
    "secagg-corrupt-fraction": 0.0,
    "secagg-dropout-fraction": 0.25,
}


@pytest.mark.parametrize("extra", [{}, SECURE_ONE_DROPOUT], ids=["plain", "secagg"])
def test_some_sites_refuse_for_budget_the_others_are_aggregated_and_the_run_saves(tmp_path, extra):
    """Unequal site sizes with a fixed noise multiplier: the small site (q = 1/2) runs out of
    budget in round 2 while the larger ones (q = 1/4) still train. Before the fix the refusal
    reply had no energy metrics and the round (and the adapter) was lost; under secure
    aggregation the refusal at the masked-input stage went unrecorded. Mutations: drop the
    energy from `refusal_reply`, or the `record_replies` hook in coordinator/app.py -> fails."""

    def eps(rate: float, steps: int) -> float:
        history = PrivacyHistory("prv")
        history.add(1.0, rate, steps)
        return history.epsilon(1e-5)

    assert eps(0.25, 4) < eps(0.5, 4)
    budget = (eps(0.25, 4) + eps(0.5, 4)) / 2
    assert eps(0.5, 2) <= budget
    nodes = [11, 22, 33, 44]  # SecAgg+ recovers from one dropout out of four
    config = {
        **RUN_CONFIG,
        "run-dir": str(tmp_path),
        "num-server-rounds": 2,
        "min-train-nodes": 3,  # under secure aggregation a refusal is not in the sum
        "min-available-nodes": 4,
        "dp-mode": "sample",
        "dp-noise-multiplier": 1.0,
        "dp-target-epsilon": budget,
        "run-name": "partial",
        **extra,
    }
    sites = _sites_of_sizes(tmp_path, [8, 16, 16, 16])
    if extra:  # sites with their own data hold the coordinator to their node config: agree
        sites = [{**site, "secagg-corrupt-fraction": 0.0} for site in sites]
    run_coordinator(InProcessGrid(client_app.app, config, sites, nodes), config)
    ledger = read_ledger(tmp_path / "partial")

    assert [row["round"] for row in ledger] == [0, 1, 2]
    assert ledger[1]["sites"] == nodes
    second = ledger[2]
    assert second["sites"] == [22, 33, 44]
    assert [(r["node_id"], r["site"]) for r in second["privacy"]["refused"]] == [(11, 0)]
    assert "Refusing to train" in second["privacy"]["refused"][0]["reason"]
    by_site = second["privacy"]["sites"]
    assert by_site["0"]["steps"] == 2
    assert [by_site[s]["steps"] for s in ("1", "2", "3")] == [4, 4, 4]
    assert by_site["1"]["epsilon"] == pytest.approx(eps(0.25, 4), rel=1e-6)
    assert all(s["epsilon"] <= budget for s in by_site.values())
    assert "heldout_accuracy" in second and second["energy"]
    assert all("train_loss" not in row for row in ledger[1:])  # withheld under DP
    assert (tmp_path / "partial" / "adapter" / "adapter_config.json").is_file()


def test_client_level_dp_with_partial_participation_is_accounted_as_run(tmp_path):
    """fraction-train = 0.5 over 4 sites: Flower picks 2 sites per round with non-secret
    randomness and the ledger names them, so the release is accounted at q = 1. The final ε
    is checked against Google's PLD accountant for the Gaussian mechanism actually run.
    Mutation: account at q = sampled/total (0.5) -> the calibrated noise is smaller and the
    independent ε passes the budget."""
    nodes = [11, 22, 33, 44]
    config = {
        **RUN_CONFIG,
        "run-dir": str(tmp_path),
        "num-server-rounds": 2,
        "fraction-train": 0.5,
        "min-train-nodes": 2,
        "min-available-nodes": 4,
        "dp-mode": "client",
        "dp-client-clip": 0.05,
        "dp-client-target-epsilon": 3.0,
        "dp-client-delta": 0.01,
        "run-name": "partial-client",
    }
    run_coordinator(InProcessGrid(client_app.app, config, [{}] * 4, nodes), config)
    ledger = read_ledger(tmp_path / "partial-client")

    assert [len(row["sites"]) for row in ledger[1:]] == [2, 2]
    block = ledger[2]["privacy"]
    assert block["sample_rate"] == 1.0 and block["steps"] == 2
    independent = gaussian_rounds_epsilon(block["noise_multiplier"], 2, 0.01)
    assert independent <= 3.0 * 1.001
    assert block["epsilon"] == pytest.approx(independent, rel=0.01)


class CrashAfterRepliesGrid(InProcessGrid):
    """Kills the coordinator right after its ``crash_at_train``-th train batch was answered:
    the sites trained and released their updates, the coordinator recorded nothing."""

    def __init__(self, run_config: dict, crash_at_train: int) -> None:
        super().__init__(client_app.app, run_config, SITES, NODES)
        self.crash_at_train = crash_at_train
        self.train_batches = 0

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout)
        if messages and messages[0].metadata.message_type == "train":
            self.train_batches += 1
            if self.train_batches == self.crash_at_train:
                raise CrashError
        return replies


def test_steps_released_before_a_coordinator_crash_stay_accounted_after_resume(tmp_path):
    """Round 2's updates were released, then the coordinator died before checkpointing it.
    The resumed run (new Flower run, new node ids, empty context.state) repeats round 2, so
    each site took 2 + 2 + 2 + 2 = 8 DP steps; the final ε must be that of 8 steps, by Google's
    PLD accountant. Mutation: keep the account in context.state (or write the file after the
    reply) -> the sites continue from the coordinator's checkpoint and report 6 steps."""
    dp = {"dp-mode": "sample", "dp-noise-multiplier": 1.0, "dp-target-epsilon": 50.0}
    config = {**RUN_CONFIG, "run-dir": str(tmp_path), **dp, "run-name": "killed"}
    with pytest.raises(CrashError):
        run_coordinator(CrashAfterRepliesGrid(config, crash_at_train=2), config)
    assert [row["round"] for row in read_ledger(tmp_path / "killed")] == [0, 1]
    resumed = {**config, "resume": "killed"}
    run_coordinator(InProcessGrid(client_app.app, resumed, SITES, RESUMED_NODES), resumed, run_id=2)
    ledger = read_ledger(tmp_path / "killed")

    assert [row["round"] for row in ledger] == [0, 1, 2, 3]
    rate = poisson_sample_rate(12, 4)
    independent = poisson_gaussian_epsilon(1.0, rate, 8, 1e-5)
    for site in ledger[3]["privacy"]["sites"].values():
        assert site["steps"] == 8
        assert site["epsilon"] == pytest.approx(independent, rel=0.01)


def test_a_configuration_that_cannot_learn_under_dp_is_warned_with_its_figure():
    """The shipped defaults (batch 8, rank 8 with projector, 96 examples per site) against
    the DP scenario's settings: only the first is warned, with the bound's figure."""

    def warning(config: dict) -> str | None:
        config = {**config, "dp-mode": "sample", "dp-target-epsilon": 8.0}
        run = RunSettings.from_config(config)
        guard = PrivacyGuard(PrivacySettings.from_config(config), run, FedAvg())
        return guard.snr_warning(initial_adapter(run.base_model, run.lora))

    shipped = warning({})
    assert shipped is not None and "signal-to-noise is at most 0.0" in shipped
    figure = float(shipped.split("at most ")[1].split(" ")[0])
    assert 0 < figure < MIN_SNR
    assert warning(Scenario.load("dp").run_config) is None
