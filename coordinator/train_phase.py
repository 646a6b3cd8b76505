"""The training half of a round: send the global adapter, collect updates, aggregate.

Kept apart from the round loop because it has more than one form: plain (each site's
update reaches the coordinator and is validated one by one) and, with secure aggregation,
a multi-stage protocol after which the coordinator holds only the sum. Both return the same
`TrainOutcome`, so the loop in `coordinator/app.py` reads the same either way.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from coordinator.liveness import RoundFailedError, dropped_nodes, error_reasons, require_replies
from coordinator.round_record import bytes_by_node, payload_bytes
from fedvlm.adapter import Adapter, adapter_to_arrayrecord
from fedvlm.energy import EnergyMeter, EnergyReading
from strategies import AdapterStrategy

# (round, replies) -> (new global adapter or None, aggregated metrics): the strategy's own
# `aggregate_train`, or the privacy guard's under DP (coordinator/privacy_guard.py).
Aggregate = Callable[[int, Sequence[Message]], tuple[ArrayRecord | None, MetricRecord | None]]


@dataclass
class TrainOutcome:
    """What the training half of a round produced, for the ledger and the next round."""

    new_global: ArrayRecord
    metrics: MetricRecord | None
    replies: list[Message]  # replies that carry each site's scalar metrics (energy, loss)
    dropped: list[int]
    bytes_up: dict[str, int]  # per node id
    bytes_down: int
    aggregation_energy: EnergyReading
    # Secure aggregation only: sites refused during the round and shares that disagreed at
    # unmasking (the round still completed), kept for the ledger.
    secagg_notes: list[str] = field(default_factory=list)
    # Secure aggregation only: the round's graph degree and threshold, the threat model they
    # were derived from and the failure probabilities they guarantee (`GraphBounds.as_record`).
    secagg: dict[str, Any] = field(default_factory=dict)


def plain_train_phase(
    strategy: AdapterStrategy,
    grid: Grid,
    server_round: int,
    global_adapter: Adapter,
    train_config: ConfigRecord,
    *,
    timeout: float,
    min_replies: int,
    meter: EnergyMeter,
    aggregate: Aggregate | None = None,
) -> TrainOutcome:
    """One train phase where every update is seen, validated and aggregated by the strategy.

    ``aggregate`` replaces ``strategy.aggregate_train`` (differential privacy sets aside
    refusals, or sums unit-weight clipped updates and adds noise before the strategy applies
    them).

    Raises
    ------
    NotEnoughSitesError
        When fewer than `min_replies` sites answered (named in the message, with the
        sites' own error reasons).
    RoundFailedError
        When every reply was rejected by validation (the strategy's reasons listed).
    """
    outgoing = list(
        strategy.configure_train(
            server_round, adapter_to_arrayrecord(global_adapter), train_config, grid
        )
    )
    replies = list(grid.send_and_receive(outgoing, timeout=timeout))
    dropped = dropped_nodes(outgoing, replies)
    bytes_down = sum(payload_bytes(m) for m in outgoing)
    answered = len(outgoing) - len(dropped)
    require_replies(server_round, answered, min_replies, dropped, replies, bytes_down)
    with meter.measure() as aggregation:
        new_global, metrics = (aggregate or strategy.aggregate_train)(server_round, replies)
    if new_global is None:
        rejected = [vars(r) for r in getattr(strategy, "last_rejections", [])]
        reasons = "".join(f"\n  node {r['node_id']}: {r['check']}: {r['reason']}" for r in rejected)
        raise RoundFailedError(
            f"round {server_round}: no valid update arrived from {len(outgoing)} sampled "
            f"sites; the strategy rejected:{reasons or ' nothing (see the sites logs)'}",
            {"dropped": dropped, "errors": error_reasons(replies), "rejected": rejected},
            replies,
            bytes_down,
        )
    return TrainOutcome(
        new_global=new_global,
        metrics=metrics,
        replies=[m for m in replies if not m.has_error()],
        dropped=dropped,
        bytes_up=bytes_by_node(replies),
        bytes_down=bytes_down,
        aggregation_energy=aggregation.reading,
    )
