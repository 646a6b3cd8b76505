"""The energy meter measures real work with real codecarbon, and the ledger's arithmetic holds."""

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedvlm.codecarbon_adapter import (
    PRIVATE_ATTRIBUTES,
    check_codecarbon_version,
    shared_tracker,
)
from fedvlm.energy import (
    DEFAULT_NETWORK_KWH_PER_GB,
    EnergyMeter,
    EnergyReading,
    EnergySettings,
    IntensitySource,
    Method,
    add_readings,
    decode_method_code,
    method_code,
    metrics_to_reading,
    network_energy,
    network_kwh_per_gb,
    reading_to_metrics,
    round_energy,
)
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
    assert reading.cpu_method in {"RAPL", "TDP estimate", "constant", "hardware counter"}
    assert reading.ram_method.startswith("constant (") and reading.ram_method.endswith(" W)")


def test_tracker_leaves_no_files_behind(measured: tuple[EnergyReading, Path]) -> None:
    _, workdir = measured
    assert list(workdir.iterdir()) == []


def test_carbon_is_kwh_times_the_sites_explicit_intensity(
    measured: tuple[EnergyReading, Path],
) -> None:
    reading, _ = measured
    assert reading.intensity_source == "explicit"
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


def test_disabled_meter_reports_time_but_no_energy() -> None:
    meter = EnergyMeter(EnergySettings(enabled=False, country_iso_code="FRA"))
    with meter.measure() as handle:
        _train_a_little(steps=5)
    reading = handle.reading
    assert reading is not None and reading.seconds > 0
    assert (reading.kwh, reading.co2_kg) == (0.0, 0.0)
    assert (reading.cpu_method, reading.gpu_method, reading.ram_method) == ("none",) * 3


def test_reading_survives_the_metric_record(measured: tuple[EnergyReading, Path]) -> None:
    reading, _ = measured
    for source in (
        EnergySettings(carbon_intensity_g_per_kwh=100.0),
        EnergySettings(country_iso_code="SWE"),
        EnergySettings(),
    ):
        intensity, _ = source.intensity
        moved = EnergyReading(
            **{
                **reading.__dict__,
                "intensity_g_per_kwh": intensity,
                "intensity_source": source.intensity_source,
            }
        )
        metrics = reading_to_metrics(moved)
        assert all(type(value) in (int, float) for value in metrics.values())
        assert metrics_to_reading(metrics) == moved
    assert metrics_to_reading(reading_to_metrics(reading)).country_iso_code is None


def test_method_code_round_trips() -> None:
    for cpu, gpu, ram, source in itertools.product(Method, Method, Method, IntensitySource):
        assert decode_method_code(method_code(cpu, gpu, ram, source)) == (cpu, gpu, ram, source)


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
    coordinator = EnergySettings.from_config(
        {"energy-tracking": False, "coordinator-carbon-intensity": 30}, prefix="coordinator-"
    )
    assert coordinator == EnergySettings(enabled=False, carbon_intensity_g_per_kwh=30.0)
    assert network_kwh_per_gb({}) == DEFAULT_NETWORK_KWH_PER_GB
    assert network_kwh_per_gb({"network-kwh-per-gb": 0.01}) == 0.01
    with pytest.raises(ConfigError, match="network-kwh-per-gb"):
        network_kwh_per_gb({"network-kwh-per-gb": -1})


def test_network_energy_is_bytes_times_coefficient() -> None:
    kwh, kg = network_energy(2_500_000_000, intensity_g_per_kwh=400.0, kwh_per_gb=0.06)
    assert kwh == pytest.approx(2.5 * 0.06, rel=1e-15)
    assert kg == pytest.approx(kwh * 0.4, rel=1e-15)


def _reading(kwh: float, intensity: float, source: str = "explicit") -> EnergyReading:
    return EnergyReading(
        seconds=2.0,
        cpu_kwh=kwh / 4,
        gpu_kwh=0.0,
        ram_kwh=kwh * 3 / 4,
        kwh=kwh,
        co2_kg=kwh * intensity / 1000,
        intensity_g_per_kwh=intensity,
        intensity_source=source,
        cpu_method="TDP estimate",
        gpu_method="none",
        ram_method="constant (10.0 W)",
    )


def test_round_block_parts_sum_to_totals() -> None:
    nodes = {"site-a": _reading(1e-5, 50.0), "site-b": _reading(3e-5, 700.0)}
    coordinator = _reading(2e-6, 475.0, "world average (fallback)")
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
    total = add_readings(_reading(1e-5, 50.0), _reading(3e-5, 50.0))
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
    owners = {"BaseEmissionsTracker": tracker.tracker, "Emissions": Emissions}
    cpus = [device for device in tracker.tracker._hardware if isinstance(device, CPU)]
    if cpus:
        owners["CPU"] = cpus[0]
    assert set(PRIVATE_ATTRIBUTES) >= set(owners)
    for owner, names in PRIVATE_ATTRIBUTES.items():
        if owner in owners:
            for name in names:
                assert hasattr(owners[owner], name), f"{owner}.{name}"
