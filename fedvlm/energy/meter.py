"""The meter: the energy one site (a node or the coordinator) uses for each phase of its work.

Each `with meter.measure():` block is one window of the process's one codecarbon tracker
(`SharedTracker`): no tracker or task is started or stopped per block, so a measurement costs
codecarbon's own reading of the hardware and nothing more (`benchmarks/bench_energy.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from fedvlm.energy.codecarbon_adapter import WORLD_AVERAGE_G_PER_KWH, shared_tracker
from fedvlm.energy.reading import NOT_MEASURED, EnergyReading
from fedvlm.energy.settings import (
    KEY_COUNTRY,
    KEY_INTENSITY,
    PREFIX_COORDINATOR,
    EnergySettings,
    IntensitySource,
)
from fedvlm.errors import FedVLMError

log = logging.getLogger(__name__)


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
        if self._tracker is None:
            start = time.perf_counter()
            try:
                yield handle
            finally:
                seconds = time.perf_counter() - start
                handle.reading = EnergyReading.at_site(
                    self.settings, NOT_MEASURED, seconds, 0.0, 0.0, 0.0, 0.0
                )
            return
        shared = self._tracker
        if not shared.busy.acquire(blocking=False):
            raise FedVLMError("energy measurements cannot overlap within one process")
        try:
            methods = shared.methods()
            shared.open_window()
            start = time.perf_counter()
            try:
                yield handle
            finally:
                seconds = time.perf_counter() - start
                window = shared.close_window()
                handle.reading = EnergyReading.at_site(
                    self.settings,
                    methods,
                    seconds,
                    window.cpu_kwh,
                    window.gpu_kwh,
                    window.ram_kwh,
                    window.ram_watts,
                )
        finally:
            shared.busy.release()
