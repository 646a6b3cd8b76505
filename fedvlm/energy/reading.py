"""One measured piece of work's energy and the carbon it implies at its site.

Carbon is never taken from codecarbon: it is kWh x the site's intensity, so a site's explicit
intensity changes its gCO2e exactly in proportion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedvlm.energy.codecarbon_adapter import ComponentMethods, Method
from fedvlm.energy.settings import EnergySettings, IntensitySource

#: No energy was measured (tracking off): what a disabled meter's readings carry.
NOT_MEASURED = ComponentMethods(Method.NONE, Method.NONE, Method.NONE)


@dataclass(frozen=True)
class EnergyReading:
    """Energy of one measured piece of work, with the carbon it implies at its site.

    `ram_watts` is the power behind a `Method.CONSTANT` RAM figure (0 otherwise); the methods
    and the intensity source are enums, turned into text only for the ledger (`labels`,
    `intensity_text`).
    """

    seconds: float
    cpu_kwh: float
    gpu_kwh: float
    ram_kwh: float
    kwh: float
    co2_kg: float
    intensity_g_per_kwh: float
    intensity_source: IntensitySource
    country_iso_code: str | None
    methods: ComponentMethods
    ram_watts: float

    @classmethod
    def at_site(
        cls,
        settings: EnergySettings,
        methods: ComponentMethods,
        seconds: float,
        cpu_kwh: float,
        gpu_kwh: float,
        ram_kwh: float,
        ram_watts: float,
    ) -> EnergyReading:
        """A measurement with the carbon of the site's intensity (`settings`)."""
        intensity, source = settings.intensity
        kwh = math.fsum((cpu_kwh, gpu_kwh, ram_kwh))
        return cls(
            seconds=seconds,
            cpu_kwh=cpu_kwh,
            gpu_kwh=gpu_kwh,
            ram_kwh=ram_kwh,
            kwh=kwh,
            co2_kg=kwh * intensity / 1000.0,
            intensity_g_per_kwh=intensity,
            intensity_source=source,
            country_iso_code=settings.country_iso_code
            if source is IntensitySource.COUNTRY
            else None,
            methods=methods,
            ram_watts=ram_watts if methods.ram is Method.CONSTANT else 0.0,
        )

    @property
    def is_fallback(self) -> bool:
        """True when the carbon figure rests on the world-average intensity."""
        return self.intensity_source is IntensitySource.FALLBACK

    @property
    def intensity_text(self) -> str:
        """Where the intensity came from, as the ledger writes it ("country FRA", ...)."""
        return self.intensity_source.describe(self.country_iso_code)

    @property
    def labels(self) -> dict[str, str]:
        """Each component's method as the ledger writes it, e.g. RAM "constant (10.0 W)"."""
        return {
            "cpu": self.methods.cpu.label,
            "gpu": self.methods.gpu.label,
            "ram": self.methods.ram.label_at(self.ram_watts),
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
        country_iso_code=first.country_iso_code,
        methods=first.methods,
        ram_watts=first.ram_watts,
    )
