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
from fedvlm.settings_registry import SETTINGS, Scope, setting


def _unset_or_non_negative(value: float | str) -> bool:
    return value == "" or (math.isfinite(value) and value >= 0)


# A site's keys (node config); the coordinator reads the same with PREFIX_COORDINATOR from the
# run config. An empty string means "not set" (TOML has no null).
PREFIX_COORDINATOR = "coordinator-"
_COUNTRY_DOC = "ISO 3166 alpha-3 code of {} grid (codecarbon's table); empty: not set."
_INTENSITY_DOC = "Carbon intensity of {} grid in gCO2e/kWh, wins over the country; empty: not set."
TRACKING = setting(
    "energy-tracking",
    bool,
    True,
    "Measure energy and carbon (codecarbon) on every node and the coordinator; a site's own "
    "value wins.",
    scope=Scope.BOTH,
)
COUNTRY = setting("country-iso-code", str, "", _COUNTRY_DOC.format("the site's"), scope=Scope.NODE)
INTENSITY = setting(
    "carbon-intensity",
    float,
    "",
    _INTENSITY_DOC.format("the site's"),
    scope=Scope.NODE,
    check=_unset_or_non_negative,
    expect="a number >= 0 or empty",
)
COORDINATOR_COUNTRY = setting(
    PREFIX_COORDINATOR + COUNTRY.key, str, "", _COUNTRY_DOC.format("the coordinator's")
)
COORDINATOR_INTENSITY = setting(
    PREFIX_COORDINATOR + INTENSITY.key,
    float,
    "",
    _INTENSITY_DOC.format("the coordinator's"),
    check=_unset_or_non_negative,
    expect="a number >= 0 or empty",
)
NETWORK_KWH_PER_GB = setting(
    "network-kwh-per-gb",
    float,
    DEFAULT_NETWORK_KWH_PER_GB,
    "Energy of moving one GB over the network (the run's network model).",
    check=lambda v: math.isfinite(v) and v >= 0,
    expect="a number >= 0",
)
KEY_COUNTRY, KEY_INTENSITY = COUNTRY.key, INTENSITY.key


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
        enabled = TRACKING.read(cfg)
        country_key, intensity_key = prefix + KEY_COUNTRY, prefix + KEY_INTENSITY
        country = SETTINGS[country_key].read(cfg)
        intensity = SETTINGS[intensity_key].read(cfg)
        if intensity == "":
            intensity = None
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
        if TRACKING.key in run_config:
            config.setdefault(TRACKING.key, run_config[TRACKING.key])
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
    """Read `network-kwh-per-gb` from the run config (absent: the documented default)."""
    return NETWORK_KWH_PER_GB.read(run_config)
