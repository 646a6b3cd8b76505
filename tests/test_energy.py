"""The energy meter measures real work with real codecarbon, and the ledger's arithmetic holds."""

import itertools
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from energy_helpers import reading as made_reading

from coordinator.energy_block import round_energy
from fedvlm.energy import (
    EnergyMeter,
    EnergyReading,
    EnergySettings,
    add_readings,
    metrics_to_reading,
    reading_to_metrics,
)
from fedvlm.energy.codecarbon_adapter import (
    PRIVATE_ATTRIBUTES,
    Method,
    check_codecarbon_version,
    shared_tracker,
)
from fedvlm.energy.metrics import decode_method_code, method_code
from fedvlm.energy.network import DEFAULT_NETWORK_KWH_PER_GB, network_energy
from fedvlm.energy.settings import IntensitySource, network_kwh_per_gb
from fedvlm.errors import ConfigError, FedVLMError


def _train_a_little(steps: int = 60) -> float:
    """A short real training loop (the kind of work a client does)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs, targets = torch.randn(256, 128), torch.randint(0, 8, (256,))
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[EnergyReading, Path]:
    """One real measurement, taken with the working directory in an empty folder."""
    workdir = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        meter = EnergyMeter(EnergySettings(carbon_intensity_g_per_kwh=100.0))
        with meter.measure() as handle:
            _train_a_little()
    assert handle.reading is not None
    return handle.reading, workdir


def test_real_training_uses_nonzero_energy(measured: tuple[EnergyReading, Path]) -> None:
    reading, _ = measured
    assert reading.seconds > 0
    assert reading.cpu_kwh > 0
    assert reading.ram_kwh > 0
    assert reading.kwh == pytest.approx(reading.cpu_kwh + reading.gpu_kwh + reading.ram_kwh)
    assert reading.methods.cpu in {
        Method.RAPL,
        Method.TDP_ESTIMATE,
        Method.CONSTANT,
        Method.COUNTER,
    }
    assert reading.methods.ram is Method.CONSTANT and reading.ram_watts > 0
    # RAM's constant power over the block's duration is its energy (kWh = W x s / 3.6e6).
    assert reading.ram_kwh == pytest.approx(reading.ram_watts * reading.seconds / 3.6e6, rel=0.05)
    assert reading.labels["ram"] == f"constant ({reading.ram_watts:.1f} W)"


def test_tracker_leaves_no_files_behind(measured: tuple[EnergyReading, Path]) -> None:
    _, workdir = measured
    assert list(workdir.iterdir()) == []


def test_carbon_is_kwh_times_the_sites_explicit_intensity(
    measured: tuple[EnergyReading, Path],
) -> None:
    reading, _ = measured
    assert reading.intensity_source is IntensitySource.EXPLICIT
    assert reading.intensity_text == "explicit"
    assert reading.co2_kg == reading.kwh * 100.0 / 1000.0
    meter = EnergyMeter(EnergySettings(carbon_intensity_g_per_kwh=250.0))
    with meter.measure() as handle:
        _train_a_little(steps=10)
    other = handle.reading
    assert other is not None and other.kwh > 0
    # Same work per kWh, 2.5x the grid intensity -> exactly 2.5x the carbon per kWh.
    assert (other.co2_kg / other.kwh) / (reading.co2_kg / reading.kwh) == pytest.approx(
        2.5, rel=1e-12
    )


def test_measurements_cannot_overlap_in_one_process() -> None:
    meter = EnergyMeter()
    with meter.measure(), pytest.raises(FedVLMError, match="overlap"), meter.measure():
        pass


def test_work_between_measurements_is_not_counted() -> None:
    """A measurement counts its own block only, not what the process did since the last one.

    The tracker lives as long as the process; each block opens its own window. Mutation: not
    resetting the devices' baselines in `SharedTracker.open_window` makes the empty block carry
    the unmetered training before it, and this test fail.
    """
    meter = EnergyMeter(EnergySettings(carbon_intensity_g_per_kwh=100.0))
    with meter.measure() as busy:
        _train_a_little(steps=60)
    _train_a_little(steps=120)  # twice that work, outside any measurement
    with meter.measure() as empty:
        pass
    assert busy.reading is not None and empty.reading is not None
    assert busy.reading.cpu_kwh > 0
    # Not 0: CPU times tick in 10 ms, and the closing reading's own work is in its window.
    assert empty.reading.cpu_kwh < busy.reading.cpu_kwh / 2
    assert empty.reading.ram_kwh < busy.reading.ram_kwh / 2


def test_a_child_process_work_is_counted_from_one_walk_of_proc() -> None:
    """A running child's CPU time counts, with codecarbon's two readings sharing one /proc walk.

    Mutation: an empty process table in `codecarbon_adapter._one_process_table` hides the child
    from the closing reading and makes the first assertion fail.
    """
    burn = "import time\nend = time.time() + 5\nwhile time.time() < end:\n    pass\n"
    meter = EnergyMeter(EnergySettings(carbon_intensity_g_per_kwh=100.0))
    walk = psutil._ppid_map
    with meter.measure() as idle:
        time.sleep(0.5)
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        time.sleep(0.3)  # the child is running before the window opens, as codecarbon needs
        with meter.measure() as busy:
            time.sleep(0.5)
    finally:
        child.kill()
        child.wait()
    assert busy.reading is not None and idle.reading is not None
    assert busy.reading.cpu_kwh > 1.5 * idle.reading.cpu_kwh
    assert psutil._ppid_map is walk  # psutil is left as it was


def test_disabled_meter_reports_time_but_no_energy() -> None:
    meter = EnergyMeter(EnergySettings(enabled=False, country_iso_code="FRA"))
    with meter.measure() as handle:
        _train_a_little(steps=5)
    reading = handle.reading
    assert reading is not None and reading.seconds > 0
    assert (reading.kwh, reading.co2_kg) == (0.0, 0.0)
    assert reading.labels == {"cpu": "none", "gpu": "none", "ram": "none"}


def test_reading_survives_the_metric_record(measured: tuple[EnergyReading, Path]) -> None:
    measured_reading, _ = measured
    for settings in (
        EnergySettings(carbon_intensity_g_per_kwh=100.0),
        EnergySettings(country_iso_code="SWE"),
        EnergySettings(),
    ):
        moved = EnergyReading.at_site(
            settings,
            measured_reading.methods,
            measured_reading.seconds,
            measured_reading.cpu_kwh,
            measured_reading.gpu_kwh,
            measured_reading.ram_kwh,
            measured_reading.ram_watts,
        )
        metrics = reading_to_metrics(moved)
        assert all(type(value) in (int, float) for value in metrics.values())
        back = metrics_to_reading(metrics)
        assert back == moved
        assert back.intensity_text == settings.intensity_source
    assert metrics_to_reading(reading_to_metrics(measured_reading)).country_iso_code is None


def test_method_code_round_trips() -> None:
    for cpu, gpu, ram, source in itertools.product(Method, Method, Method, IntensitySource):
        assert decode_method_code(method_code(cpu, gpu, ram, source)) == (cpu, gpu, ram, source)


def test_a_ledger_label_names_its_method() -> None:
    """The report reads methods back from the ledger's labels, RAM's with its power."""
    for method in Method:
        assert Method.from_label(method.label_at(10.0)) is method
    assert Method.CONSTANT.label_at(10.0) == "constant (10.0 W)"
    with pytest.raises(ValueError, match="unknown"):
        Method.from_label("guess")


def test_intensity_precedence_and_country_data() -> None:
    assert EnergySettings(country_iso_code="FRA", carbon_intensity_g_per_kwh=12.0).intensity == (
        12.0,
        IntensitySource.EXPLICIT,
    )
    france, source = EnergySettings(country_iso_code="FRA").intensity
    assert source is IntensitySource.COUNTRY and 20 < france < 150
    assert EnergySettings().intensity == (475.0, IntensitySource.FALLBACK)


@pytest.mark.parametrize(
    ("config", "prefix", "key"),
    [
        ({"country-iso-code": "XYZ"}, "", "country-iso-code"),
        ({"carbon-intensity": -5.0}, "", "carbon-intensity"),
        ({"carbon-intensity": "dirty"}, "", "carbon-intensity"),
        ({"energy-tracking": "maybe"}, "", "energy-tracking"),
        ({"coordinator-country-iso-code": "QQQ"}, "coordinator-", "coordinator-country-iso-code"),
        ({"coordinator-carbon-intensity": -1}, "coordinator-", "coordinator-carbon-intensity"),
    ],
)
def test_bad_settings_name_their_key(config: dict, prefix: str, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        EnergySettings.from_config(config, prefix=prefix)
    assert error.value.key == key


def test_settings_from_config() -> None:
    node = EnergySettings.from_config({"country-iso-code": "deu", "carbon-intensity": ""})
    assert node == EnergySettings(enabled=True, country_iso_code="DEU")
    coordinator = EnergySettings.for_coordinator(
        {"energy-tracking": False, "coordinator-carbon-intensity": 30, "carbon-intensity": 9}
    )
    assert coordinator == EnergySettings(enabled=False, carbon_intensity_g_per_kwh=30.0)
    # A site: the run switches tracking unless the site's own node config says otherwise.
    run = {"energy-tracking": False, "coordinator-carbon-intensity": 30}
    assert EnergySettings.for_site({"carbon-intensity": 5}, run) == EnergySettings(
        enabled=False, carbon_intensity_g_per_kwh=5.0
    )
    assert EnergySettings.for_site({"energy-tracking": True}, run).enabled
    assert network_kwh_per_gb({}) == DEFAULT_NETWORK_KWH_PER_GB
    assert network_kwh_per_gb({"network-kwh-per-gb": 0.01}) == 0.01
    with pytest.raises(ConfigError, match="network-kwh-per-gb"):
        network_kwh_per_gb({"network-kwh-per-gb": -1})


def test_network_energy_is_bytes_times_coefficient() -> None:
    kwh, kg = network_energy(2_500_000_000, intensity_g_per_kwh=400.0, kwh_per_gb=0.06)
    assert kwh == pytest.approx(2.5 * 0.06, rel=1e-15)
    assert kg == pytest.approx(kwh * 0.4, rel=1e-15)


def test_round_block_parts_sum_to_totals() -> None:
    nodes = {"site-a": made_reading(1e-5, 50.0), "site-b": made_reading(3e-5, 700.0)}
    coordinator = made_reading(2e-6, 475.0, IntensitySource.FALLBACK)
    up = {"site-a": 4_000_000, "site-b": 6_000_000}
    block = round_energy(nodes, coordinator, up, bytes_down=20_000_000, kwh_per_gb=0.05)

    network = block["network"]
    assert network["kwh"] == pytest.approx(30_000_000 / 1e9 * 0.05, rel=1e-12)
    # Uploads at each sender's intensity, downloads at the coordinator's.
    expected_g = (4e6 * 50 + 6e6 * 700 + 20e6 * 475) / 1e9 * 0.05
    assert network["gco2e"] == pytest.approx(expected_g, rel=1e-12)
    assert (network["bytes_up"], network["bytes_down"]) == (10_000_000, 20_000_000)

    parts = [*block["nodes"].values(), block["coordinator"], network]
    assert math.fsum(p["kwh"] for p in parts) == block["total"]["kwh"]
    assert math.fsum(p["gco2e"] for p in parts) == block["total"]["gco2e"]
    assert block["nodes"]["site-b"]["gco2e"] == pytest.approx(3e-5 * 700, rel=1e-12)
    assert block["fallback"] == ["coordinator"]
    assert block["methods"]["ram"] == ["constant (10.0 W)"]

    second = round_energy(nodes, coordinator, 10_000_000, 20_000_000, 0.05, previous=block)
    assert second["cumulative"]["kwh"] == pytest.approx(2 * block["total"]["kwh"], rel=1e-12)


def test_add_readings_sums_a_nodes_train_and_evaluate() -> None:
    total = add_readings(
        made_reading(1e-5, 50.0, seconds=2.0), made_reading(3e-5, 50.0, seconds=2.0)
    )
    assert total.kwh == pytest.approx(4e-5) and total.co2_kg == pytest.approx(4e-5 * 0.05)
    assert total.seconds == 4.0


def test_a_fresh_process_measures_silently_and_writes_nothing(tmp_path: Path) -> None:
    script = (
        "from fedvlm.energy import EnergyMeter, EnergySettings\n"
        "meter = EnergyMeter(EnergySettings(carbon_intensity_g_per_kwh=80.0))\n"
        "with meter.measure() as handle:\n"
        "    sum(i * i for i in range(300_000))\n"
        "assert handle.reading.kwh > 0\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("CODECARBON_LOG_LEVEL", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    assert list(tmp_path.iterdir()) == []


def test_codecarbon_adapter_refuses_an_unchecked_version() -> None:
    """A codecarbon outside the checked range is refused before its private attributes are read.

    Mutation: widening `CHECKED_VERSIONS` to accept 3.4 makes the first assertion fail.
    """
    with pytest.raises(FedVLMError, match="3.4.0"):
        check_codecarbon_version("3.4.0")
    with pytest.raises(FedVLMError):
        check_codecarbon_version("3.3.1")
    check_codecarbon_version("3.3.2")
    check_codecarbon_version()  # the installed one: pyproject's pin matches CHECKED_VERSIONS


def test_the_private_attributes_the_adapter_names_exist_in_installed_codecarbon() -> None:
    """Every private attribute in PRIVATE_ATTRIBUTES is where the adapter reads it."""
    from codecarbon.core.emissions import Emissions
    from codecarbon.external.hardware import CPU

    tracker = shared_tracker()
    owners = {"BaseEmissionsTracker": tracker.tracker, "Emissions": Emissions, "psutil": psutil}
    cpus = [device for device in tracker.tracker._hardware if isinstance(device, CPU)]
    if cpus:
        owners["CPU"] = cpus[0]
    assert set(PRIVATE_ATTRIBUTES) >= set(owners)
    for owner, names in PRIVATE_ATTRIBUTES.items():
        if owner in owners:
            for name in names:
                assert hasattr(owners[owner], name), f"{owner}.{name}"
