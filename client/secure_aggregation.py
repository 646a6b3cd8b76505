"""A site's side of secure aggregation: the six SecAgg+ stages as ClientApp handlers.

With ``secure-aggregation = true`` the coordinator never receives a site's adapter update.
It drives the round through six messages (``privacy.secagg.flower.MESSAGE_TYPES``); the
fourth, ``train.secagg_masked_input``, brings the global adapter and train config like a plain
train message: the site trains with the very same code as a plain round, clips the update,
flattens it, and replies with the masked integer vector plus scalar metrics only. Between
stages the site's secrets live in ``context.state`` (never sent), because Flower may start a
fresh ClientApp process for every message.

A site recomputes the round's protocol parameters from its own run config and refuses a
coordinator that offers different ones (an error reply and a log line naming the keys). As
the run config is the coordinator's own in a deployment, a site also holds the offered degree
and threshold to its floor (``SiteFloor``: its node config's γ, δ, σ and federation size,
else the defaults), so no coordinator can lower them by stating a weaker threat model. It
signs its round keys with its long-term key (``site_identity``) so that its peers, not the
coordinator, decide whose keys they accept.
"""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from client.site_identity import site_name, site_record
from fedvlm import contract
from fedvlm.adapter import Adapter
from fedvlm.config import RUN_DIR, RUN_NAME, NodeSettings
from fedvlm.energy import EnergyMeter, reading_to_metrics
from fedvlm.errors import ConfigError, FedVLMError
from privacy.secagg import CoordinatorMisbehaviourError, SecAggClient, SecAggConfig
from privacy.secagg.flower import (
    MESSAGE_TYPES,
    count_aborts,
    load_client,
    payload_to_recorddict,
    recorddict_to_payload,
    save_client,
)
from privacy.secagg.identity import (
    IDENTITY_KEY,
    SIMULATION_FOLDER,
    SiteIdentity,
    identity_from_node_config,
    simulation_identity,
)
from privacy.secagg.messages import MASKED, Stage
from privacy.secagg.settings import (
    MAX_ABORTS,
    SecureAggregationSettings,
    SiteFloor,
    check_offered,
    flatten_update,
)
from privacy.settings import PrivacySettings
from privacy.site_account import SiteRefusalError, refusal_reply

log = logging.getLogger(__name__)

TrainUpdate = Callable[[Message, Context], tuple[Adapter, dict[str, Any]]]
MeterFor = Callable[[Context], EnergyMeter]


def uniform_weights(context: Context) -> bool:
    """Whether every site weighs 1 in the sum (client-level DP), never its example count.

    With example-count weights one site could move the sum by more than the clip, and the
    coordinator's noise, calibrated to the clip, would under-protect it.
    """
    return PrivacySettings.from_config(context.run_config).mode == "client"


def site_identity(context: Context) -> SiteIdentity:
    """This site's certified identity: from its node settings, or made for a simulated site.

    A deployed site without one cannot take part: its peers would have no way to tell its
    keys from keys the coordinator made up.
    """
    configured = identity_from_node_config(context.node_config)
    if configured is not None:
        return configured
    if NodeSettings.from_config(context.node_config).data_path is not None:
        raise ConfigError(
            IDENTITY_KEY.key,
            "secure aggregation needs this site's <site>.key, <site>.crt and ca.crt from "
            "`fedvlm credentials` (`fedvlm node --private-key --ca-cert` sets them)",
        )
    run_name = RUN_NAME.read(context.run_config)
    if not run_name:
        raise ConfigError(RUN_NAME.key, "a simulated site keeps its identity in the run folder")
    folder = Path(RUN_DIR.read(context.run_config)).expanduser() / run_name / SIMULATION_FOLDER
    return simulation_identity(folder, site_name(context))


@contextmanager
def _refusals_logged(message: Message, context: Context) -> Iterator[None]:
    """Log why this site refuses a stage before Flower turns the error into an error reply."""
    try:
        yield
    except FedVLMError as err:
        log.error(
            "site %s refuses secure-aggregation stage '%s': %s",
            context.node_id,
            message.metadata.message_type,
            err,
        )
        raise


def _setup(message: Message, context: Context) -> Message:
    """Stage 0: check the coordinator's parameters against ours and against this site's floor,
    and that it has not aborted too many rounds after our graph-seed reveal; then draw fresh
    keys."""
    with _refusals_logged(message, context):
        settings = SecureAggregationSettings.from_config(context.run_config)
        payload = recorddict_to_payload(message.content)
        offered = SecAggConfig.from_dict(payload)
        check_offered(offered, settings, uniform_weights=uniform_weights(context))
        deployed = NodeSettings.from_config(context.node_config).data_path is not None
        SiteFloor.of_site(context.run_config, context.node_config, deployed=deployed).check(offered)
        count_aborts(context.state, MAX_ABORTS.read({**context.run_config, **context.node_config}))
        client, reply = SecAggClient.setup(payload, site_identity(context))
    save_client(context.state, client)
    return Message(payload_to_recorddict(reply), reply_to=message)


def _protocol_stage(message: Message, context: Context) -> Message:
    """The stages without training: pure protocol work on the state kept since setup."""
    with _refusals_logged(message, context):
        client = load_client(context.state)
        reply = client.handle(recorddict_to_payload(message.content))
    save_client(context.state, client)
    return Message(payload_to_recorddict(reply), reply_to=message)


def masked_input_handler(
    train_update: TrainUpdate, meter_for: MeterFor
) -> Callable[[Message, Context], Message]:
    """Return the stage-2 handler: train as in a plain round, clip, mask, reply.

    Parameters
    ----------
    train_update : callable
        ``(message, context) -> (update, metrics)``: the plain round's local training.
    meter_for : callable
        ``context -> EnergyMeter`` of this site.
    """

    def masked_input(message: Message, context: Context) -> Message:
        with _refusals_logged(message, context):
            settings = SecureAggregationSettings.from_config(context.run_config)
            client = load_client(context.state)  # fail before training if setup never ran
            payload = recorddict_to_payload(message.content)
            uniform = uniform_weights(context)
            try:
                with meter_for(context).measure() as energy:
                    # Clipped to dp-client-clip here already under client-level DP.
                    update, metrics = train_update(message, context)
                    flat = flatten_update(update, client.config.clip)
                    examples = int(metrics[contract.NUM_EXAMPLES])
                    weight = settings.weight(examples, uniform_weights=uniform)
                    reply = client.handle(payload, flat, weight)
            except SiteRefusalError as refusal:
                # Sample-level DP budget spent: no masked input (a dropout of this stage),
                # but the site's account still reaches the coordinator's ledger.
                return refusal_reply(message, refusal, reading_to_metrics(energy.reading))
        save_client(context.state, client)
        metrics[contract.BYTES_UP] = int(reply[MASKED].nbytes)
        content = payload_to_recorddict(reply)
        content[contract.METRICS] = MetricRecord({**metrics, **reading_to_metrics(energy.reading)})
        content[contract.SITE] = site_record(context)
        return Message(content, reply_to=message)

    return masked_input


def register(app: ClientApp, train_update: TrainUpdate, meter_for: MeterFor) -> None:
    """Register the six stage handlers on ``app`` (called by ``client/app.py``)."""
    handlers = {
        Stage.SETUP: _setup,
        Stage.REVEAL: _protocol_stage,
        Stage.SHARE_KEYS: _protocol_stage,
        Stage.MASKED_INPUT: masked_input_handler(train_update, meter_for),
        Stage.CONSISTENCY: _protocol_stage,
        Stage.UNMASK: _protocol_stage,
    }
    for stage, handler in handlers.items():
        category, action = MESSAGE_TYPES[stage].split(".")
        getattr(app, category)(action)(handler)


def refuse_plain_train(context: Context) -> None:
    """Refuse to send a plain update when this run promises secure aggregation.

    Raises
    ------
    CoordinatorMisbehaviourError
        If ``secure-aggregation = true``: the coordinator asked for the update in the clear.
    """
    if SecureAggregationSettings.from_config(context.run_config).enabled:
        log.error(
            "site %s refuses a plain train message: secure-aggregation = true", context.node_id
        )
        raise CoordinatorMisbehaviourError(
            "the coordinator asked for a plain update but this run has secure-aggregation = true"
        )
