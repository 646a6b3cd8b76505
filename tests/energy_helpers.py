"""A hand-made energy reading for tests of what the ledger, report and model card do with it."""

from fedvlm.energy import EnergyReading
from fedvlm.energy.codecarbon_adapter import ComponentMethods, Method
from fedvlm.energy.settings import IntensitySource

#: What a VM without RAPL reports: CPU from its TDP and load, no GPU, RAM a 10 W constant.
ESTIMATED = ComponentMethods(cpu=Method.TDP_ESTIMATE, gpu=Method.NONE, ram=Method.CONSTANT)


def reading(
    kwh: float,
    intensity: float,
    source: IntensitySource = IntensitySource.EXPLICIT,
    country: str | None = None,
    seconds: float = 3.0,
) -> EnergyReading:
    """`kwh` split 20% CPU / 80% RAM, its carbon at `intensity` gCO2e/kWh from `source`."""
    return EnergyReading(
        seconds=seconds,
        cpu_kwh=kwh * 0.2,
        gpu_kwh=0.0,
        ram_kwh=kwh * 0.8,
        kwh=kwh,
        co2_kg=kwh * intensity / 1000,
        intensity_g_per_kwh=intensity,
        intensity_source=source,
        country_iso_code=country,
        methods=ESTIMATED,
        ram_watts=10.0,
    )
