"""A reading as MetricRecord scalars and back: how a node's energy crosses the wire.

Flower's MetricRecord holds numbers only, so the methods, the intensity source and the country
are packed into integers; the key names are the contract's (`fedvlm.contract.energy_keys`).
"""

from __future__ import annotations

from collections.abc import Mapping

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
from fedvlm.energy.codecarbon_adapter import (
    WORLD_AVERAGE_G_PER_KWH,
    ComponentMethods,
    Method,
)
from fedvlm.energy.reading import EnergyReading
from fedvlm.energy.settings import IntensitySource
from fedvlm.errors import FedVLMError


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


def reading_to_metrics(reading: EnergyReading) -> dict[str, float | int]:
    """The reading as MetricRecord scalars (Flower's MetricRecord holds numbers only)."""
    methods = reading.methods
    country = reading.country_iso_code
    return {
        METRIC_KWH: reading.kwh,
        METRIC_CPU_KWH: reading.cpu_kwh,
        METRIC_GPU_KWH: reading.gpu_kwh,
        METRIC_RAM_KWH: reading.ram_kwh,
        METRIC_RAM_WATTS: reading.ram_watts,
        METRIC_EMISSIONS_KG: reading.co2_kg,
        METRIC_SECONDS: reading.seconds,
        METRIC_INTENSITY: reading.intensity_g_per_kwh,
        METRIC_METHOD: method_code(methods.cpu, methods.gpu, methods.ram, reading.intensity_source),
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
        intensity_source=source,
        country_iso_code=_int_to_country(country_value) if country_value else None,
        methods=ComponentMethods(cpu=cpu, gpu=gpu, ram=ram),
        ram_watts=float(metrics.get(METRIC_RAM_WATTS, 0.0)),
    )
