"""The training half of a round under secure aggregation: the coordinator learns only the sum.

Six exchanges with the sampled sites, one `grid.send_and_receive` each (SecAgg+, see
`privacy/secagg`): key setup (certified round keys, a commitment to a graph seed), the
graph-seed reveal, encrypted key shares, masked inputs (this message also carries the global
adapter and train config; sites train, then mask), a signed survivor list, and the shares that
remove the masks. A site that fails or stays silent at any stage is a dropout, except at the
reveal, where it aborts the round (the graph may not be drawn without its seed); the round
completes while a threshold of shares remains. The unmasked weighted sum is turned
back into adapter tensors, optionally noised (client-level DP), validated and applied by the
strategy through `apply_update_sum`, so only a strategy linear in the updates can run here.

Per-site scalars (loss, examples, energy) still arrive: they ride in the masked-input reply's
MetricRecord, next to the masked vector, never inside it.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from coordinator.liveness import NotEnoughSitesError, require_replies
from coordinator.round_record import payload_bytes
from coordinator.train_phase import TrainOutcome
from fedvlm import contract
from fedvlm.adapter import Adapter, adapter_to_arrayrecord
from fedvlm.energy import EnergyMeter, EnergyReading, add_readings
from privacy.secagg import RoundFailedError, SecAggServer, Stage
from privacy.secagg.flower import from_replies, to_messages
from privacy.secagg.messages import payload_nbytes
from privacy.secagg.settings import SecureAggregationSettings, unflatten_sum
from strategies import AdapterStrategy

# (update sum, number of summed sites) -> noised update sum, e.g. client-level DP.
AddNoise = Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]]
# Sees the masked-input replies' scalars (e.g. sample-level DP accounts); may raise to stop.
RecordReplies = Callable[[Sequence[Message]], object]


def secure_train_phase(
    strategy: AdapterStrategy,
    grid: Grid,
    server_round: int,
    global_adapter: Adapter,
    train_config: ConfigRecord,
    *,
    timeout: float,
    min_replies: int,
    meter: EnergyMeter,
    settings: SecureAggregationSettings,
    add_noise: AddNoise | None = None,
    record_replies: RecordReplies | None = None,
) -> TrainOutcome:
    """One train phase in which no single site's update is ever seen by the coordinator.

    Parameters
    ----------
    strategy, grid, server_round, global_adapter, train_config, timeout, min_replies, meter
        As for `plain_train_phase`; ``timeout`` bounds each of the six exchanges.
    settings : SecureAggregationSettings
        The run's ``secagg-*`` settings (the sites check the round's parameters against
        their own copy).
    add_noise : callable, optional
        Client-level DP: noise for the unmasked sum. Then every site weighs 1 and the sum
        is applied with total weight = number of summed sites.
    record_replies : callable, optional
        Called with the masked-input replies (scalars only) as they arrive, e.g. to record
        the sites' sample-level DP accounts; a site that refused to train sent no masked
        vector and is a dropout of that stage.

    Returns
    -------
    TrainOutcome
        ``replies`` are the survivors' masked-input replies (scalar metrics only);
        ``bytes_up`` counts, per node, every protocol payload it sent (masked vector, public
        keys, encrypted shares, signatures); ``bytes_down`` the global adapter sent with the
        masked-input stage plus every protocol payload sent.

    Raises
    ------
    NotEnoughSitesError
        When too many sites dropped for the sum to be recovered safely, or fewer than
        ``min_replies`` sites are in the sum.
    """
    outgoing = list(
        strategy.configure_train(
            server_round, adapter_to_arrayrecord(global_adapter), train_config, grid
        )
    )
    nodes = [m.metadata.dst_node_id for m in outgoing]
    # Flower's strategies share one RecordDict between all messages: give each node its own,
    # since its secure-aggregation payload is added to it.
    train_content = {m.metadata.dst_node_id: RecordDict(dict(m.content.items())) for m in outgoing}
    # What the sites send: the strategy's update spec (FFA-LoRA exchanges only B and the
    # projector; every other linear strategy exchanges the whole adapter).
    shapes = {name: tuple(spec.shape) for name, spec in strategy.update_spec().items()}
    length = sum(math.prod(shape) for shape in shapes.values())
    config = settings.round_config(len(nodes), uniform_weights=add_noise is not None)
    server = SecAggServer(config, nodes, length)

    bytes_up = {str(node): 0 for node in nodes}
    bytes_down = 0
    masked_replies: list[Message] = []
    readings: list[EnergyReading] = []
    while not server.done:
        stage = server.stage
        requests = server.requests()
        extra = train_content if stage == Stage.MASKED_INPUT else None
        messages = to_messages(requests, group_id=str(server_round), extra=extra)
        bytes_down += sum(payload_nbytes(p) for p in requests.values())
        bytes_down += sum(payload_bytes(m) for m in messages)  # the global adapter
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        payloads = from_replies(replies)
        for node, payload in payloads.items():
            bytes_up[str(node)] += payload_nbytes(payload)
        if stage == Stage.MASKED_INPUT:
            masked_replies = [m for m in replies if not m.has_error()]
            if record_replies is not None:
                record_replies(replies)
        with meter.measure() as work:
            try:
                server.receive(payloads)
            except RoundFailedError as err:
                dropped = sorted(set(nodes) - set(server.active))
                raise NotEnoughSitesError(
                    f"round {server_round}: secure aggregation cannot complete at stage "
                    f"'{stage}': {err}. Sites that dropped or were refused: {dropped} "
                    f"({server.rejected or 'no refusals'})"
                ) from err
        readings.append(work.reading)

    result = server.result()
    dropped = sorted(set(nodes) - set(result.survivors))
    require_replies(server_round, len(result.survivors), min_replies, dropped)
    with meter.measure() as work:
        update_sum = unflatten_sum(result.weighted_sum, shapes)
        total_weight = float(result.total_weight)
        if add_noise is not None:
            update_sum = add_noise(update_sum, len(result.survivors))
            total_weight = float(len(result.survivors))
        new_global = strategy.apply_update_sum(server_round, update_sum, total_weight)
    readings.append(work.reading)

    survivors = set(result.survivors)
    summed = [m for m in masked_replies if m.metadata.src_node_id in survivors]
    metrics = strategy.aggregate_metrics(m.content[contract.METRICS] for m in summed)
    aggregation = readings[0]
    for reading in readings[1:]:
        aggregation = add_readings(aggregation, reading)
    return TrainOutcome(
        new_global=new_global,
        metrics=metrics,
        replies=summed,
        dropped=dropped,
        bytes_up=bytes_up,
        bytes_down=bytes_down,
        aggregation_energy=aggregation,
        secagg_notes=[f"site {n}: {r}" for n, r in result.rejected.items()] + result.unmask_errors,
        secagg=config.guarantees.as_record(config.threat),
    )
