"""codecarbon behind one small interface: the only module of ours that touches codecarbon.

codecarbon has no public accessor for what fedvlm needs, so this adapter reads its private
attributes, named in `PRIVATE_ATTRIBUTES` and checked against the codecarbon versions in
`CHECKED_VERSIONS` (the pin in pyproject.toml matches): a newer codecarbon is refused by
`check_codecarbon_version` with what to do, instead of measuring silently wrong.

What it offers the rest of fedvlm: one tracker per process, built once and measured in windows
(`shared_tracker`, `SharedTracker.open_window` / `close_window`), which method measured each
component (`Method`, `ComponentMethods`), the country intensities codecarbon computes offline
(`country_intensities`), and the hardware it detected (`describe_hardware`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from importlib.metadata import version
from typing import Any

import psutil

from fedvlm.errors import FedVLMError

#: The codecarbon private attributes this module reads or calls, by owner (checked in 3.3.2).
#: `BaseEmissionsTracker`'s are the measuring loop that `start_task` / `stop_task` wrap, used
#: without the wrapping (see `SharedTracker`).
PRIVATE_ATTRIBUTES = {
    "BaseEmissionsTracker": (
        "_hardware",
        "_last_measured_time",
        "_measure_power_and_energy",
        "_total_cpu_energy",
        "_total_gpu_energy",
        "_total_ram_energy",
        "_ram_power",
    ),
    "CPU": ("_mode",),
    "Emissions": ("_global_energy_mix_to_emissions_rate",),
    "psutil": ("_ppid_map",),  # see `_one_process_table`; absent -> slower, never wrong
}

#: codecarbon releases whose private attributes above were read and found as used here:
#: [lowest, first unchecked). pyproject.toml pins the same range.
CHECKED_VERSIONS = ((3, 3, 2), (3, 4))

#: codecarbon's world average (its data file cites the IEA Global Energy & CO2 Status Report
#: 2019); used only when a site gives neither a country nor an intensity, and flagged as such.
WORLD_AVERAGE_G_PER_KWH = 475.0


def _release(text: str) -> tuple[int, ...]:
    """Numeric release of a version string ("3.3.2" -> (3, 3, 2); suffixes dropped)."""
    parts = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_codecarbon_version(installed: str | None = None) -> None:
    """Refuse a codecarbon outside `CHECKED_VERSIONS` (its private attributes may differ).

    Raises
    ------
    FedVLMError
        Naming the installed and the checked versions.
    """
    installed = installed or version("codecarbon")
    low, high = CHECKED_VERSIONS
    if not low <= _release(installed) < high:
        raise FedVLMError(
            f"codecarbon {installed} is not a version fedvlm was checked with "
            f"(>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}): fedvlm reads its "
            f"private attributes {PRIVATE_ATTRIBUTES}; install a checked version "
            "(pip install -e .) or re-check those attributes and widen CHECKED_VERSIONS"
        )


class Method(IntEnum):
    """How one component's energy was obtained; estimates are kept apart from readings."""

    NONE = 0
    RAPL = 1
    NVML = 2
    TDP_ESTIMATE = 3
    CONSTANT = 4
    COUNTER = 5  # another hardware counter: Apple powermetrics, AMD SMI, Raspberry Pi PMIC

    @property
    def label(self) -> str:
        """Human-readable name used in the ledger and the model card."""
        return _METHOD_LABELS[self]

    @property
    def is_estimate(self) -> bool:
        """True when the figure comes from a model of power, not from a meter."""
        return self in (Method.TDP_ESTIMATE, Method.CONSTANT)

    def label_at(self, watts: float) -> str:
        """The label with the constant's power, e.g. "constant (10.0 W)" (RAM's method)."""
        return f"{self.label} ({watts:.1f} W)" if self is Method.CONSTANT else self.label

    @classmethod
    def from_label(cls, label: str) -> Method:
        """The method behind a ledger label ("RAPL", "constant (10.0 W)", ...).

        The ledger is JSON, so a report reading it back gets labels, not enums.

        Raises
        ------
        ValueError
            If the label is none of `label` / `label_at`'s.
        """
        for method in cls:
            if label == method.label or label.startswith(f"{method.label} ("):
                return method
        raise ValueError(f"unknown energy method label {label!r}")


_METHOD_LABELS = {
    Method.NONE: "none",
    Method.RAPL: "RAPL",
    Method.NVML: "NVML",
    Method.TDP_ESTIMATE: "TDP estimate",
    Method.CONSTANT: "constant",
    Method.COUNTER: "hardware counter",
}


@dataclass(frozen=True)
class ComponentMethods:
    """The method codecarbon used for each component of one measurement."""

    cpu: Method
    gpu: Method
    ram: Method


@cache
def country_intensities() -> dict[str, float]:
    """gCO2e/kWh per ISO 3166 alpha-3 code, exactly as codecarbon computes it offline."""
    from codecarbon.core.emissions import Emissions
    from codecarbon.input import DataSource

    check_codecarbon_version()

    mixes = DataSource().get_global_energy_mix_data()
    return {
        iso: Emissions._global_energy_mix_to_emissions_rate(mix).kgs_per_kWh * 1000.0
        for iso, mix in mixes.items()
    }


@dataclass(frozen=True)
class WindowEnergy:
    """What codecarbon measured in one window: energy per component, and RAM's power."""

    cpu_kwh: float
    gpu_kwh: float
    ram_kwh: float
    ram_watts: float


class SharedTracker:
    """One codecarbon tracker per process, built once and read in windows.

    Building a tracker costs ~1.5 s (most of it `cpuinfo` detecting the CPU model), so it is
    built once, and hardware detection runs in a background thread as soon as the first meter
    exists (it overlaps with model loading). A window then costs codecarbon's own measuring and
    nothing more: `open_window` sets each device's baseline (in process mode, the CPU times of
    this process tree), `close_window` runs codecarbon's measuring step once and returns the
    growth of its cumulative totals. Each of the two walks /proc once to find the tree
    (`_one_process_table`); `start_task` / `stop_task` walked it three times per window, and
    added a monitor-thread restart (the thread then walked it again every second), two
    emissions summaries and task bookkeeping. That 1 s monitor only averages the power of a GPU
    without an energy counter, which now reads its power once per window instead
    (docs/architecture.md#codecarbon-33).
    """

    def __init__(self) -> None:
        from codecarbon import OfflineEmissionsTracker

        check_codecarbon_version()

        # Silence codecarbon before building the tracker: it logs at INFO while being built,
        # before its own `log_level` applies (importing it resets the level from the
        # environment, hence after the import). CODECARBON_LOG_LEVEL still wins if set.
        level = os.environ.get("CODECARBON_LOG_LEVEL", "ERROR").upper()
        logging.getLogger("codecarbon").setLevel(level)

        self.tracker = OfflineEmissionsTracker(
            tracking_mode="process",
            output_methods=[],  # no emissions.csv, no API, no logger output
            emissions_endpoint="",
            electricitymaps_api_token="",
            log_level=level.lower(),
            measure_power_secs=3600,  # unused: the tracker's schedulers are never started
            allow_multiple_runs=True,
            force_carbon_intensity_g_co2e_kwh=WORLD_AVERAGE_G_PER_KWH,  # we recompute carbon
        )
        self.busy = threading.Lock()
        self._ready = threading.Thread(
            target=self.tracker.get_detected_hardware, name="energy-warm-up", daemon=True
        )
        self._ready.start()
        self._methods: ComponentMethods | None = None

    def methods(self) -> ComponentMethods:
        """The method of each component (known once hardware detection has finished)."""
        self._ready.join()
        if self._methods is None:
            self._methods = detect_methods(self.tracker)
        return self._methods

    def open_window(self) -> None:
        """Start measuring: every device's baseline is now (what `start_task` does first)."""
        self._ready.join()
        for device in self.tracker._hardware:
            device.start()
        self.tracker._last_measured_time = time.perf_counter()

    def close_window(self) -> WindowEnergy:
        """Energy since `open_window`: codecarbon's totals after one measurement minus before."""
        tracker = self.tracker
        before = (
            tracker._total_cpu_energy.kWh,
            tracker._total_gpu_energy.kWh,
            tracker._total_ram_energy.kWh,
        )
        with _one_process_table():
            tracker._measure_power_and_energy()
        return WindowEnergy(
            cpu_kwh=tracker._total_cpu_energy.kWh - before[0],
            gpu_kwh=tracker._total_gpu_energy.kWh - before[1],
            ram_kwh=tracker._total_ram_energy.kWh - before[2],
            ram_watts=float(tracker._ram_power.W),
        )

    def hardware_info(self) -> dict[str, Any]:
        """codecarbon's description of this machine (CPU model and count, GPU, RAM)."""
        return self.tracker.get_detected_hardware()


@contextmanager
def _one_process_table() -> Iterator[None]:
    """Let codecarbon's CPU and RAM readings of one measurement share one walk of /proc.

    In process mode each of the two asks psutil for this process's descendants, and psutil
    finds them by reading the parent of every process on the machine (`psutil._ppid_map`):
    two walks of /proc a millisecond apart, the bulk of a measurement's cost, growing with the
    machine's process count. Within this block psutil answers both from one walk; the figures
    are the same. Should a psutil release drop `_ppid_map`, each reading walks /proc again.
    """
    walk = getattr(psutil, "_ppid_map", None)
    if walk is None:
        yield
        return
    table = walk()
    psutil._ppid_map = lambda: table
    try:
        yield
    finally:
        psutil._ppid_map = walk


def detect_methods(tracker: Any) -> ComponentMethods:
    """Name the method codecarbon chose for each component.

    codecarbon exposes no public accessor for this, so it reads the tracker's hardware list;
    an unknown device type maps to `Method.COUNTER` rather than being hidden.
    """
    from codecarbon.core.gpu import is_nvidia_system
    from codecarbon.external.hardware import CPU, GPU, MODE_CPU_LOAD
    from codecarbon.external.ram import RAM

    cpu = gpu = ram = Method.NONE
    for device in tracker._hardware:
        if isinstance(device, RAM):
            ram = Method.CONSTANT
        elif isinstance(device, GPU):
            gpu = Method.NVML if is_nvidia_system() else Method.COUNTER
        elif isinstance(device, CPU):
            cpu = {
                MODE_CPU_LOAD: Method.TDP_ESTIMATE,
                "constant": Method.CONSTANT,
                "intel_rapl": Method.RAPL,
                "windows_emi": Method.RAPL,
                "intel_power_gadget": Method.RAPL,
            }.get(device._mode, Method.COUNTER)
        elif getattr(device, "chip_part", "") == "RAM":
            ram = Method.COUNTER
        else:  # Apple silicon or Raspberry Pi chips
            if getattr(device, "chip_part", "") == "GPU":
                gpu = Method.COUNTER
            else:
                cpu = Method.COUNTER
    return ComponentMethods(cpu=cpu, gpu=gpu, ram=ram)


def describe_hardware() -> str:
    """This process's hardware as codecarbon detected it, e.g. "AMD EPYC (2 threads), no GPU".

    For `run.json` (the model card's `hardware_used`); sites keep theirs to themselves.
    """
    info = shared_tracker().hardware_info()
    cpu = f"{info.get('cpu_model') or 'unknown CPU'} ({info.get('cpu_count')} threads)"
    gpu = info.get("gpu_model") or "no GPU"
    return f"{cpu}, {gpu}, {info.get('ram_total_size', 0):.0f} GB RAM"


_shared: SharedTracker | None = None
_shared_lock = threading.Lock()


def shared_tracker() -> SharedTracker:
    """The process's one tracker, built on first use (all meters share it)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SharedTracker()
        return _shared
