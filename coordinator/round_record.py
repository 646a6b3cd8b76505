"""What a round's replies say, turned into ledger fields: bytes and energy per node.

Read from each reply's own records, never from Flower's aggregated MetricRecord: that is an
example-weighted average, right for accuracy and wrong for sums such as bytes or kWh.
"""

from collections.abc import Iterable

from flwr.app import Message

from fedvlm import contract
from fedvlm.adapter import adapter_nbytes, arrayrecord_to_adapter
from fedvlm.energy import EnergyReading, add_readings, metrics_to_reading


def payload_bytes(message: Message) -> int:
    """Adapter bytes carried by a message's ArrayRecord (0 for errors and metric-only ones)."""
    if message.has_error() or contract.ARRAYS not in message.content:
        return 0
    return adapter_nbytes(arrayrecord_to_adapter(message.content[contract.ARRAYS]))


def bytes_by_node(replies: Iterable[Message]) -> dict[str, int]:
    """Upload bytes per replying node id."""
    return {str(m.metadata.src_node_id): payload_bytes(m) for m in replies if not m.has_error()}


def node_energy(*phases: Iterable[Message]) -> dict[str, EnergyReading]:
    """Each node's energy over the round: its train and evaluate readings summed."""
    readings: dict[str, EnergyReading] = {}
    for replies in phases:
        for message in replies:
            if message.has_error() or contract.METRICS not in message.content:
                continue
            node = str(message.metadata.src_node_id)
            reading = metrics_to_reading(message.content[contract.METRICS])
            readings[node] = add_readings(readings[node], reading) if node in readings else reading
    return readings


def metric_by_node(replies: Iterable[Message], key: str) -> dict[str, float]:
    """One scalar each valid reply carries (e.g. peak GPU MiB, train seconds), by node id."""
    return {
        str(m.metadata.src_node_id): float(m.content[contract.METRICS][key])
        for m in replies
        if not m.has_error()
        and contract.METRICS in m.content
        and key in m.content[contract.METRICS]
    }
