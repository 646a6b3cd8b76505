"""Every energy setting a run or a site gives, parsed in one place.

A site's settings come from its node config (`country-iso-code`, `carbon-intensity`) with the
run's `energy-tracking` switch; the coordinator's from the run config with the `coordinator-`
prefix; the network coefficient from the run config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from fedvlm.energy.codecarbon_adapter import WORLD_AVERAGE_G_PER_KWH, country_intensities
from fedvlm.energy.network import DEFAULT_NETWORK_KWH_PER_GB
from fedvlm.errors import ConfigError

# Config keys (node_config per site; the coordinator reads the run config with PREFIX_COORDINATOR).
KEY_TRACKING = "energy-tracking"
KEY_COUNTRY = "country-iso-code"
KEY_INTENSITY = "carbon-intensity"
KEY_NETWORK_KWH_PER_GB = "network-kwh-per-gb"
PREFIX_COORDINATOR = "coordinator-"


class IntensitySource(IntEnum):
    """Where a site's carbon intensity came from (the thousands digit of the wire's method code)."""

    EXPLICIT = 0
    COUNTRY = 1
    FALLBACK = 2

    def describe(self, country: str | None) -> str:
        """Text for the ledger and report: "explicit", "country FRA", "world average (fallback)"."""
        if self is IntensitySource.EXPLICIT:
            return "explicit"
        if self is IntensitySource.COUNTRY:
            return f"country {country}"
        return "world average (fallback)"


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

    @classmethod
    def for_site(
        cls, node_config: Mapping[str, Any], run_config: Mapping[str, Any]
    ) -> EnergySettings:
        """A site's settings: the run switches tracking, the site gives its intensity.

        A site's own `energy-tracking` wins over the run's.
        """
        config = dict(node_config)
        if KEY_TRACKING in run_config:
            config.setdefault(KEY_TRACKING, run_config[KEY_TRACKING])
        return cls.from_config(config)

    @classmethod
    def for_coordinator(cls, run_config: Mapping[str, Any]) -> EnergySettings:
        """The coordinator's settings: the run config's `coordinator-` keys."""
        return cls.from_config(run_config, prefix=PREFIX_COORDINATOR)

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
        return self.intensity[1].describe(self.country_iso_code)


def network_kwh_per_gb(run_config: Mapping[str, Any]) -> float:
    """Read `network-kwh-per-gb` from the run config (absent or "" -> the documented default)."""
    value = run_config.get(KEY_NETWORK_KWH_PER_GB, "")
    if value == "":
        return DEFAULT_NETWORK_KWH_PER_GB
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(KEY_NETWORK_KWH_PER_GB, f"must be a number >= 0, got {value!r}")
    return float(value)
