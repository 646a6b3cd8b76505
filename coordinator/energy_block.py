"""The ledger's energy block of one round: nodes, coordinator and network, totals carried on.

Field names are the ledger's (`fedvlm/ledger_schema.py`); the figures come from the nodes'
readings (`fedvlm.energy.metrics_to_reading`), the coordinator's own meter and the network
model (`fedvlm.energy.network`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fedvlm.energy import EnergyReading
from fedvlm.energy.network import DEFAULT_NETWORK_KWH_PER_GB, network_energy

#: How the network figure was obtained, as the ledger and the report say it.
NETWORK_METHOD = "estimate (bytes x kWh/GB)"


def _entry(reading: EnergyReading) -> dict[str, Any]:
    return {
        "kwh": reading.kwh,
        "gco2e": reading.co2_kg * 1000.0,
        "cpu_kwh": reading.cpu_kwh,
        "gpu_kwh": reading.gpu_kwh,
        "ram_kwh": reading.ram_kwh,
        "seconds": reading.seconds,
        "intensity_g_per_kwh": reading.intensity_g_per_kwh,
        "intensity_source": reading.intensity_text,
        "methods": reading.labels,
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
        "method": NETWORK_METHOD,
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
    entries = [*nodes.values(), coord]
    methods = {
        part: sorted({entry["methods"][part] for entry in entries})
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
