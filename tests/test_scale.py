"""Scale: the 100-site scenario, the memory sampler, per-process model sharing, and a real
20-site federation through Flower's engine with RSS sampled every round."""

import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

from fedvlm.config import RunSettings
from fedvlm.data.partition import synthetic_site
from fedvlm.training import train_local
from fedvlm.vlm import load_peft_model
from simulations.memory import (
    CLIENT_WORKER,
    FLOWER_CONTROL,
    RAY_RUNTIME,
    SERVERAPP,
    MemorySample,
    MemorySampler,
    RoundMemory,
    role_of,
    sample_tree,
)
from simulations.runner import run_scenario
from simulations.scenario import Scenario


def test_scale_scenario_parses_and_samples_a_fraction_of_100_sites():
    scenario = Scenario.load("scale-100")  # also checks every key against pyproject/Flower
    assert scenario.num_sites == 100
    assert 0 < scenario.run_config["fraction-train"] < 1
    assert 0 < scenario.run_config["fraction-evaluate"] < 1
    assert scenario.run_config["min-available-nodes"] == 100
    assert scenario.federation["client-resources-num-cpus"] >= 1


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        ("ray::ClientAppActor.run", CLIENT_WORKER),
        ("/v/bin/python3.11 /v/bin/flwr-simulation --runtime-api-address 1:2", SERVERAPP),
        ("/v/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=x", RAY_RUNTIME),
        ("ray::DashboardAgent", RAY_RUNTIME),
        ("/v/bin/python3.11 /v/bin/flower-superlink --insecure --simulation", FLOWER_CONTROL),
        ("/usr/bin/sleep 10", "other"),
    ],
)
def test_processes_are_grouped_by_role(cmdline, role):
    assert role_of(cmdline) == role


def test_sample_tree_counts_a_child_and_its_memory():
    hold = 64_000_000
    child = subprocess.Popen(
        [sys.executable, "-c", f"import sys,time; b=bytearray({hold}); print(1, flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        child.stdout.readline()  # the buffer is allocated
        sample = sample_tree(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert sample.processes["other"] >= 1
    assert sample.rss["other"] >= hold
    assert sample.total >= hold
    assert sample_tree(child.pid).total == 0  # a finished process has no tree


def test_sampler_takes_one_sample_per_ledger_row(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    with MemorySampler(os.getpid(), ledger, interval=0.02) as sampler:
        for number in range(3):
            with ledger.open("a") as f:
                f.write(json.dumps({"round": number}) + "\n")
            while number not in sampler.result.per_round:
                time.sleep(0.01)
    assert sorted(sampler.result.per_round) == [0, 1, 2]
    assert sampler.result.samples >= 3


def test_growth_is_relative_to_the_chosen_round_and_roles():
    def sample(server: int, workers: int) -> MemorySample:
        return MemorySample(0.0, {SERVERAPP: server, CLIENT_WORKER: workers, "other": 7}, {})

    memory = RoundMemory(per_round={1: sample(100, 300), 5: sample(102, 306)})
    assert memory.growth([SERVERAPP, CLIENT_WORKER], 1, 5) == pytest.approx(0.02)
    assert memory.growth([SERVERAPP], 1, 5) == pytest.approx(0.02)
    assert memory.growth(["other"], 1, 5) == 0.0


def test_trend_averages_the_first_and_last_rounds_and_ignores_round_zero():
    def sample(rss: int) -> MemorySample:
        return MemorySample(0.0, {SERVERAPP: rss}, {})

    values = {0: 10, 1: 100, 2: 104, 3: 98, 4: 110, 5: 102, 6: 106}  # round 0: nothing loaded
    memory = RoundMemory(per_round={r: sample(v) for r, v in values.items()})
    assert memory.trend([SERVERAPP], 2) == pytest.approx((102 + 106) / (100 + 104) - 1)
    assert memory.trend([SERVERAPP], 1) == pytest.approx(106 / 100 - 1)
    with pytest.raises(ValueError, match="at least 7 rounds"):
        memory.trend([SERVERAPP], 7)


def test_base_model_is_loaded_once_per_process_and_shared_by_every_site():
    run = RunSettings()
    first, _ = load_peft_model(run.base_model, run.lora)
    again, _ = load_peft_model(run.base_model, dataclasses.replace(run.lora))
    assert again is first  # equal settings: the same object, no second copy of the weights


def test_local_training_leaves_no_optimizer_state_behind():
    torch.set_num_threads(1)
    run = RunSettings()
    model, processor = load_peft_model(run.base_model, run.lora)
    site = synthetic_site(0, 1, n_train=8, n_val=2, label_alpha=0.5, acquisition_skew=0.5, seed=0)
    for seed in range(2):  # two "rounds" of two "sites" in one process
        train_local(model, processor, site.train, steps=2, lr=1e-3, batch_size=4, seed=seed)
    gc.collect()
    with warnings.catch_warnings():  # isinstance touches deprecated lazy torch attributes
        warnings.simplefilter("ignore", FutureWarning)
        alive = [o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer)]
    assert alive == []


@pytest.mark.slow
def test_twenty_sites_two_rounds_complete_with_rss_sampled_each_round(tmp_path):
    scenario = Scenario.load("scale-100")
    scenario = dataclasses.replace(
        scenario, federation={**scenario.federation, "num-supernodes": 20}
    )
    overrides = {
        "num-server-rounds": 2,
        "min-available-nodes": 20,
        "min-train-nodes": 2,
        "energy-tracking": False,
        "run-name": "scale-20",
    }
    ledger = tmp_path / "scale-20" / "ledger.jsonl"
    with MemorySampler(os.getpid(), ledger) as sampler:
        run_scenario(scenario, overrides, tmp_path)
    result = sampler.result
    assert sorted(result.per_round) == [0, 1, 2]
    for number in (1, 2):
        sample = result.per_round[number]
        assert sample.processes[CLIENT_WORKER] >= 1, sample
        assert sample.rss[CLIENT_WORKER] > 0 and sample.rss[SERVERAPP] > 0
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert all(len(r["sites"]) == 2 for r in rows[1:])  # 10% of 20 sites trained per round
