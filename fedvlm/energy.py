"""Energy and carbon of every node's work, the coordinator's, and the network's.

Each node measures its own `train` and `evaluate` with codecarbon's `OfflineEmissionsTracker`
(no network, no `emissions.csv`, silent), sends the figures as scalars in its MetricRecord, and
the coordinator adds its own measurement and an estimate for the bytes that crossed the wire,
then writes one energy block per round into the ledger (`round_energy`).

Attribution. In codecarbon's default "machine" mode every tracker counts the whole machine, so
the four client trackers of a one-machine simulation would each report the machine's power and
their sum would over-count four times. We use `tracking_mode="process"`, verified in codecarbon
3.3.2: without RAPL the CPU power is the TDP times this process's (and its children's) share of
CPU time, and RAM is estimated from this process's resident memory. Hardware counters (RAPL,
NVML) cannot be split by process: they read the whole package or device, which is what a real
site with one node per machine wants; their labels say so in the report.

Carbon is never taken from codecarbon: it is recomputed as kWh x the site's intensity, so a
site's explicit intensity changes its gCO2e exactly in proportion.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from typing import Any

from fedvlm.codecarbon_adapter import (
    WORLD_AVERAGE_G_PER_KWH,
    ComponentMethods,
    Method,
    country_intensities,
    shared_tracker,
)
from fedvlm.contract.energy_keys import (
    METRIC_COUNTRY,
    METRIC_CPU_KWH,
    METRIC_EMISSIONS_KG,
    METRIC_GPU_KWH,
    METRIC_INTENSITY,
    METRIC_KWH,
    METRIC_METHOD,
    METRIC_RAM_KWH,
    METRIC_RAM_WATTS,
    METRIC_SECONDS,
)
from fedvlm.errors import ConfigError, FedVLMError

log = logging.getLogger(__name__)

#: Electricity intensity of internet data transmission: 0.06 kWh/GB for 2015 from Aslan, Mayers,
#: Koomey & France, "Electricity Intensity of Internet Data Transmission: Untangling the
#: Estimates", Journal of Industrial Ecology 22(4):785-798 (2018). They find it halves roughly
#: every two years, so for today's networks it is a deliberately conservative upper estimate;
#: override with the run-config key `network-kwh-per-gb`.
DEFAULT_NETWORK_KWH_PER_GB = 0.06

# Config keys (node_config per site; the coordinator reads the run config with PREFIX_COORDINATOR).
KEY_TRACKING = "energy-tracking"
KEY_COUNTRY = "country-iso-code"
KEY_INTENSITY = "carbon-intensity"
KEY_NETWORK_KWH_PER_GB = "network-kwh-per-gb"
PREFIX_COORDINATOR = "coordinator-"

_SOURCE_EXPLICIT = "explicit"
_SOURCE_FALLBACK = "world average (fallback)"
_COUNTRY_PREFIX = "country "


class IntensitySource(IntEnum):
    """Where a site's carbon intensity came from (the thousands digit of the method code)."""

    EXPLICIT = 0
    COUNTRY = 1
    FALLBACK = 2


def method_code(cpu: Method, gpu: Method, ram: Method, source: IntensitySource) -> int:
    """Pack the three methods and the intensity source into one int for a MetricRecord.

    Decimal digits keep it readable in a raw ledger: ``source*1000 + ram*100 + gpu*10 + cpu``.
    """
    return int(source) * 1000 + int(ram) * 100 + int(gpu) * 10 + int(cpu)


def decode_method_code(code: int) -> tuple[Method, Method, Method, IntensitySource]:
    """Inverse of `method_code`: (cpu, gpu, ram, intensity source)."""
    code = int(code)
    return (
        Method(code % 10),
        Method(code // 10 % 10),
        Method(code // 100 % 10),
        IntensitySource(code // 1000),
    )


def _country_to_int(iso: str) -> int:
    """Alpha-3 code as a number (MetricRecords carry no strings); 0 means no country."""
    value = 0
    for letter in iso:
        value = value * 26 + (ord(letter) - ord("A"))
    return value + 1


def _int_to_country(value: int) -> str:
    value = int(value) - 1
    letters = []
    for _ in range(3):
        value, digit = divmod(value, 26)
        letters.append(chr(ord("A") + digit))
    return "".join(reversed(letters))


@dataclass(frozen=True)
class EnergySettings:
    """Whether to measure and which grid intensity applies to this site (or the coordinator).

    An explicit `carbon_intensity_g_per_kwh` wins over `country_iso_code`; with neither the world
    average applies and is flagged as a fallback in every reading.
    """

    enabled: bool = True
    country_iso_code: str | None = None
    carbon_intensity_g_per_kwh: float | None = None

    def __post_init__(self) -> None:
        if self.country_iso_code is not None and self.country_iso_code not in (
            country_intensities()
        ):
            raise ConfigError(
                KEY_COUNTRY,
                f"unknown ISO 3166 alpha-3 country code {self.country_iso_code!r} "
                "(codecarbon has data for e.g. 'FRA', 'DEU', 'USA')",
            )
        intensity = self.carbon_intensity_g_per_kwh
        if intensity is not None and not (math.isfinite(intensity) and intensity >= 0):
            raise ConfigError(KEY_INTENSITY, f"must be a finite number >= 0, got {intensity!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], prefix: str = "") -> EnergySettings:
        """Parse `energy-tracking`, `{prefix}country-iso-code` and `{prefix}carbon-intensity`.

        `energy-tracking` is never prefixed, so one run-config switch turns the coordinator's
        meter off as well. An absent key or an empty string means "not set" (Flower's run config
        needs a default for every key it accepts, and TOML has no null).
        """
        enabled = cfg.get(KEY_TRACKING, True)
        if isinstance(enabled, str) and enabled.lower() in ("true", "false"):
            enabled = enabled.lower() == "true"
        if not isinstance(enabled, bool):
            raise ConfigError(KEY_TRACKING, f"must be true or false, got {enabled!r}")

        country_key, intensity_key = prefix + KEY_COUNTRY, prefix + KEY_INTENSITY
        country = cfg.get(country_key, "")
        if not isinstance(country, str):
            raise ConfigError(country_key, f"must be a country code string, got {country!r}")
        intensity = cfg.get(intensity_key, "")
        if intensity == "":
            intensity = None
        elif isinstance(intensity, bool) or not isinstance(intensity, int | float):
            raise ConfigError(intensity_key, f"must be a number (gCO2e/kWh), got {intensity!r}")
        try:
            return cls(
                enabled=enabled,
                country_iso_code=country.strip().upper() or None,
                carbon_intensity_g_per_kwh=None if intensity is None else float(intensity),
            )
        except ConfigError as error:
            raise ConfigError(prefix + error.key, str(error).split(": ", 1)[1]) from None

    @property
    def intensity(self) -> tuple[float, IntensitySource]:
        """The gCO2e/kWh that applies, and where it came from."""
        if self.carbon_intensity_g_per_kwh is not None:
            return self.carbon_intensity_g_per_kwh, IntensitySource.EXPLICIT
        if self.country_iso_code is not None:
            return country_intensities()[self.country_iso_code], IntensitySource.COUNTRY
        return WORLD_AVERAGE_G_PER_KWH, IntensitySource.FALLBACK

    @property
    def intensity_source(self) -> str:
        """Text for the report: "explicit", "country FRA" or "world average (fallback)"."""
        return _source_text(self.intensity[1], self.country_iso_code)


def _source_text(source: IntensitySource, country: str | None) -> str:
    if source is IntensitySource.EXPLICIT:
        return _SOURCE_EXPLICIT
    if source is IntensitySource.COUNTRY:
        return f"{_COUNTRY_PREFIX}{country}"
    return _SOURCE_FALLBACK


@dataclass(frozen=True)
class EnergyReading:
    """Energy of one measured piece of work, with the carbon it implies at its site."""

    seconds: float
    cpu_kwh: float
    gpu_kwh: float
    ram_kwh: float
    kwh: float
    co2_kg: float
    intensity_g_per_kwh: float
    intensity_source: str
    cpu_method: str
    gpu_method: str
    ram_method: str

    @property
    def is_fallback(self) -> bool:
        """True when the carbon figure rests on the world-average intensity."""
        return self.intensity_source == _SOURCE_FALLBACK

    @property
    def country_iso_code(self) -> str | None:
        """The site's country when its intensity came from one."""
        if self.intensity_source.startswith(_COUNTRY_PREFIX):
            return self.intensity_source.removeprefix(_COUNTRY_PREFIX)
        return None


def _ram_label(method: Method, watts: float) -> str:
    return f"constant ({watts:.1f} W)" if method is Method.CONSTANT else method.label


def _make_reading(
    settings: EnergySettings,
    methods: ComponentMethods,
    seconds: float,
    cpu_kwh: float,
    gpu_kwh: float,
    ram_kwh: float,
    ram_watts: float,
) -> EnergyReading:
    intensity, source = settings.intensity
    kwh = math.fsum((cpu_kwh, gpu_kwh, ram_kwh))
    return EnergyReading(
        seconds=seconds,
        cpu_kwh=cpu_kwh,
        gpu_kwh=gpu_kwh,
        ram_kwh=ram_kwh,
        kwh=kwh,
        co2_kg=kwh * intensity / 1000.0,
        intensity_g_per_kwh=intensity,
        intensity_source=_source_text(source, settings.country_iso_code),
        cpu_method=methods.cpu.label,
        gpu_method=methods.gpu.label,
        ram_method=_ram_label(methods.ram, ram_watts),
    )


def method_from_label(label: str) -> Method:
    """The method behind a label such as "RAPL" or "constant (10.0 W)" (for reports).

    Raises
    ------
    ValueError
        If the label is none of this module's.
    """
    if label.startswith("constant"):
        return Method.CONSTANT
    for method in Method:
        if method.label == label:
            return method
    raise ValueError(f"unknown energy method label {label!r}")


def reading_to_metrics(reading: EnergyReading) -> dict[str, float | int]:
    """The reading as MetricRecord scalars (Flower's MetricRecord holds numbers only)."""
    source = (
        IntensitySource.FALLBACK
        if reading.is_fallback
        else IntensitySource.COUNTRY
        if reading.country_iso_code
        else IntensitySource.EXPLICIT
    )
    ram_method = method_from_label(reading.ram_method)
    watts = re.fullmatch(r"constant \((.+) W\)", reading.ram_method)
    country = reading.country_iso_code
    return {
        METRIC_KWH: reading.kwh,
        METRIC_CPU_KWH: reading.cpu_kwh,
        METRIC_GPU_KWH: reading.gpu_kwh,
        METRIC_RAM_KWH: reading.ram_kwh,
        METRIC_RAM_WATTS: float(watts.group(1)) if watts else 0.0,
        METRIC_EMISSIONS_KG: reading.co2_kg,
        METRIC_SECONDS: reading.seconds,
        METRIC_INTENSITY: reading.intensity_g_per_kwh,
        METRIC_METHOD: method_code(
            method_from_label(reading.cpu_method),
            method_from_label(reading.gpu_method),
            ram_method,
            source,
        ),
        METRIC_COUNTRY: _country_to_int(country) if country else 0,
    }


def metrics_to_reading(metrics: Mapping[str, float | int]) -> EnergyReading:
    """Rebuild a node's reading from its MetricRecord scalars (inverse of `reading_to_metrics`).

    Raises
    ------
    FedVLMError
        If an energy key is missing: the node runs an incompatible client.
    """
    missing = [
        key
        for key in (METRIC_KWH, METRIC_CPU_KWH, METRIC_GPU_KWH, METRIC_RAM_KWH, METRIC_METHOD)
        if key not in metrics
    ]
    if missing:
        raise FedVLMError(f"energy metrics missing from a node's reply: {', '.join(missing)}")
    cpu, gpu, ram, source = decode_method_code(int(metrics[METRIC_METHOD]))
    country_value = int(metrics.get(METRIC_COUNTRY, 0))
    return EnergyReading(
        seconds=float(metrics.get(METRIC_SECONDS, 0.0)),
        cpu_kwh=float(metrics[METRIC_CPU_KWH]),
        gpu_kwh=float(metrics[METRIC_GPU_KWH]),
        ram_kwh=float(metrics[METRIC_RAM_KWH]),
        kwh=float(metrics[METRIC_KWH]),
        co2_kg=float(metrics.get(METRIC_EMISSIONS_KG, 0.0)),
        intensity_g_per_kwh=float(metrics.get(METRIC_INTENSITY, WORLD_AVERAGE_G_PER_KWH)),
        intensity_source=_source_text(
            source, _int_to_country(country_value) if country_value else None
        ),
        cpu_method=cpu.label,
        gpu_method=gpu.label,
        ram_method=_ram_label(ram, float(metrics.get(METRIC_RAM_WATTS, 0.0))),
    )


# --- the process-wide tracker ---------------------------------------------------------------


class Measurement:
    """Handle yielded by `EnergyMeter.measure`; `reading` is set when the block exits."""

    reading: EnergyReading | None = None


@cache
def _warn_fallback_once() -> None:
    """Say once per process (not per message) that carbon uses the world average."""
    log.warning(
        "no %s or %s set (the coordinator reads them with the '%s' prefix): carbon "
        "uses the world average %.0f gCO2e/kWh, marked as a fallback in the report",
        KEY_COUNTRY,
        KEY_INTENSITY,
        PREFIX_COORDINATOR,
        WORLD_AVERAGE_G_PER_KWH,
    )


class EnergyMeter:
    """Measures the energy of blocks of work at one site (a node or the coordinator).

    All meters of a process share one codecarbon tracker, so creating a meter per message or
    per round is cheap; measurements in one process must not overlap.
    """

    def __init__(self, settings: EnergySettings | None = None) -> None:
        self.settings = settings or EnergySettings()
        self._tracker = shared_tracker() if self.settings.enabled else None
        if self.settings.enabled and self.settings.intensity[1] is IntensitySource.FALLBACK:
            _warn_fallback_once()

    @contextmanager
    def measure(self) -> Iterator[Measurement]:
        """Measure the energy of the `with` block.

        The reading is recorded even if the block raises, so a failed round still shows the
        energy it spent.

        Raises
        ------
        FedVLMError
            If another measurement is already running in this process.
        """
        handle = Measurement()
        start = time.perf_counter()
        if self._tracker is None:
            try:
                yield handle
            finally:
                seconds = time.perf_counter() - start
                none = ComponentMethods(Method.NONE, Method.NONE, Method.NONE)
                handle.reading = _make_reading(self.settings, none, seconds, 0.0, 0.0, 0.0, 0.0)
            return
        shared = self._tracker
        if not shared.busy.acquire(blocking=False):
            raise FedVLMError("energy measurements cannot overlap within one process")
        try:
            methods = shared.methods()
            shared.start(f"fedvlm-{id(handle)}")
            try:
                yield handle
            finally:
                data = shared.stop()
                if data is None:
                    raise FedVLMError("codecarbon returned no measurement for this block")
                handle.reading = _make_reading(
                    self.settings,
                    methods,
                    float(data.duration),
                    float(data.cpu_energy),
                    float(data.gpu_energy),
                    float(data.ram_energy),
                    float(data.ram_power),
                )
        finally:
            shared.busy.release()


# --- network and the round's ledger block ---------------------------------------------------


def network_energy(
    bytes_total: int,
    intensity_g_per_kwh: float,
    kwh_per_gb: float = DEFAULT_NETWORK_KWH_PER_GB,
) -> tuple[float, float]:
    """Energy and carbon of moving `bytes_total` bytes over the internet.

    Parameters
    ----------
    bytes_total
        Bytes that crossed the wire (1 GB = 1e9 bytes).
    intensity_g_per_kwh
        Grid intensity of the sending side.
    kwh_per_gb
        Transmission intensity; the default 0.06 kWh/GB is Aslan et al. (2018), J. Ind. Ecol.
        22(4):785-798, for 2015 (an upper estimate today: it halves about every two years).

    Returns
    -------
    tuple[float, float]
        (kWh, kg CO2e).
    """
    if bytes_total < 0 or kwh_per_gb < 0:
        raise ValueError("bytes and kWh/GB must be >= 0")
    kwh = bytes_total / 1e9 * kwh_per_gb
    return kwh, kwh * intensity_g_per_kwh / 1000.0


def network_kwh_per_gb(run_config: Mapping[str, Any]) -> float:
    """Read `network-kwh-per-gb` from the run config (absent or "" -> the documented default)."""
    value = run_config.get(KEY_NETWORK_KWH_PER_GB, "")
    if value == "":
        return DEFAULT_NETWORK_KWH_PER_GB
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(KEY_NETWORK_KWH_PER_GB, f"must be a number >= 0, got {value!r}")
    return float(value)


def _entry(reading: EnergyReading) -> dict[str, Any]:
    return {
        "kwh": reading.kwh,
        "gco2e": reading.co2_kg * 1000.0,
        "cpu_kwh": reading.cpu_kwh,
        "gpu_kwh": reading.gpu_kwh,
        "ram_kwh": reading.ram_kwh,
        "seconds": reading.seconds,
        "intensity_g_per_kwh": reading.intensity_g_per_kwh,
        "intensity_source": reading.intensity_source,
        "methods": {
            "cpu": reading.cpu_method,
            "gpu": reading.gpu_method,
            "ram": reading.ram_method,
        },
    }


def round_energy(
    node_readings: Mapping[str, EnergyReading],
    coordinator: EnergyReading,
    bytes_up: int | Mapping[str, int],
    bytes_down: int,
    kwh_per_gb: float = DEFAULT_NETWORK_KWH_PER_GB,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ledger's energy block for one round.

    Parameters
    ----------
    node_readings
        Each replying node's reading (its train and evaluate summed, e.g. with `add_readings`).
    coordinator
        The coordinator's own reading for the round.
    bytes_up
        Bytes the nodes sent, in total or per node id. Upload carbon uses each sender's
        intensity; a total is split evenly across the nodes.
    bytes_down
        Bytes the coordinator sent (carbon at the coordinator's intensity).
    kwh_per_gb
        Network transmission coefficient (`network-kwh-per-gb`).
    previous
        The previous round's block, to carry the cumulative totals.

    Returns
    -------
    dict
        ``{"nodes": {id: entry}, "coordinator": entry, "network": {...}, "total": {kwh, gco2e},
        "cumulative": {kwh, gco2e}, "methods": {part: [labels]}, "fallback": [site ids]}``.
        ``total`` is the exact `math.fsum` of the node, coordinator and network figures.
    """
    if isinstance(bytes_up, Mapping):
        senders = [
            (int(bytes_up.get(n, 0)), r.intensity_g_per_kwh) for n, r in node_readings.items()
        ]
        bytes_up_total = sum(int(v) for v in bytes_up.values())
    else:
        bytes_up_total = int(bytes_up)
        share = bytes_up_total / max(len(node_readings), 1)
        senders = [(share, r.intensity_g_per_kwh) for r in node_readings.values()]
    if not node_readings:  # every node dropped: nobody left to attribute uploads to
        senders = [(bytes_up_total, coordinator.intensity_g_per_kwh)]
    senders.append((int(bytes_down), coordinator.intensity_g_per_kwh))
    flows = [network_energy(size, intensity, kwh_per_gb) for size, intensity in senders]
    network = {
        "kwh": math.fsum(kwh for kwh, _ in flows),
        "gco2e": math.fsum(kg for _, kg in flows) * 1000.0,
        "bytes_up": bytes_up_total,
        "bytes_down": int(bytes_down),
        "kwh_per_gb": kwh_per_gb,
        "method": "estimate (bytes x kWh/GB)",
    }
    nodes = {str(node): _entry(reading) for node, reading in node_readings.items()}
    nodes = dict(sorted(nodes.items()))
    coord = _entry(coordinator)
    parts = [*nodes.values(), coord, network]
    total = {
        "kwh": math.fsum(part["kwh"] for part in parts),
        "gco2e": math.fsum(part["gco2e"] for part in parts),
    }
    before = (previous or {}).get("cumulative", {"kwh": 0.0, "gco2e": 0.0})
    readings = [*node_readings.values(), coordinator]
    methods = {
        part: sorted({getattr(r, f"{part}_method") for r in readings})
        for part in ("cpu", "gpu", "ram")
    }
    return {
        "nodes": nodes,
        "coordinator": coord,
        "network": network,
        "total": total,
        "cumulative": {
            "kwh": before["kwh"] + total["kwh"],
            "gco2e": before["gco2e"] + total["gco2e"],
        },
        "methods": methods,
        "fallback": sorted(
            [node for node, r in node_readings.items() if r.is_fallback]
            + (["coordinator"] if coordinator.is_fallback else [])
        ),
    }


def add_readings(first: EnergyReading, second: EnergyReading) -> EnergyReading:
    """Sum two readings of the same site (e.g. a node's train and evaluate in one round)."""
    return EnergyReading(
        seconds=first.seconds + second.seconds,
        cpu_kwh=first.cpu_kwh + second.cpu_kwh,
        gpu_kwh=first.gpu_kwh + second.gpu_kwh,
        ram_kwh=first.ram_kwh + second.ram_kwh,
        kwh=first.kwh + second.kwh,
        co2_kg=first.co2_kg + second.co2_kg,
        intensity_g_per_kwh=first.intensity_g_per_kwh,
        intensity_source=first.intensity_source,
        cpu_method=first.cpu_method,
        gpu_method=first.gpu_method,
        ram_method=first.ram_method,
    )
