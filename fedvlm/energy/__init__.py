"""Energy and carbon of every node's work, the coordinator's, and the network's.

Each node measures its own `train` and `evaluate` (`meter`), sends the figures as scalars in its
MetricRecord (`metrics`), and the coordinator adds its own measurement and an estimate for the
bytes that crossed the wire (`network`), then writes one energy block per round into the ledger
(`coordinator/energy_block.py`). Settings are parsed in `settings`; codecarbon is reached only
through `codecarbon_adapter`.

Attribution. In codecarbon's default "machine" mode every tracker counts the whole machine, so
the four client trackers of a one-machine simulation would each report the machine's power and
their sum would over-count four times. We use `tracking_mode="process"`, verified in codecarbon
3.3.2: without RAPL the CPU power is the TDP times this process's (and its children's) share of
CPU time, and RAM is estimated from this process's resident memory. Hardware counters (RAPL,
NVML) cannot be split by process: they read the whole package or device, which is what a real
site with one node per machine wants; their labels say so in the report.

The names both sides use (meter, reading, its MetricRecord form, settings) are re-exported here.
"""

from fedvlm.energy.meter import EnergyMeter
from fedvlm.energy.metrics import metrics_to_reading, reading_to_metrics
from fedvlm.energy.reading import EnergyReading, add_readings
from fedvlm.energy.settings import EnergySettings

__all__ = [
    "EnergyMeter",
    "EnergyReading",
    "EnergySettings",
    "add_readings",
    "metrics_to_reading",
    "reading_to_metrics",
]
