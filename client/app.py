"""The ClientApp: what a site runs each round.

One round at a site, top to bottom: load the base VLM once per process, overwrite its
adapter with the global one, train on local images, and send back only the adapter update
(local - global) with scalar metrics. Images, labels and file paths never enter a reply.
"""

import time
from typing import Any

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.dp import protect_update, train_with_privacy
from client.lora_site import (
    freezes_a,
    frozen_lora_a,
    outgoing,
    site_lora,
    summed_by_coordinator,
    truncate,
)
from client.secure_aggregation import refuse_plain_train
from client.secure_aggregation import register as register_secure_aggregation
from client.site_data import load_site
from client.site_identity import site_record, site_seed
from fedvlm import contract
from fedvlm.adapter import (
    Adapter,
    adapter_nbytes,
    adapter_to_arrayrecord,
    arrayrecord_to_adapter,
    get_adapter_state,
    set_adapter_state,
    subtract,
)
from fedvlm.config import NodeSettings, RunSettings
from fedvlm.contract.eval_keys import PERSONALISED_ACCURACY, PERSONALISED_LOSS, PERSONALISED_STEPS
from fedvlm.energy import EnergyMeter, EnergySettings, reading_to_metrics
from fedvlm.processes import TORCH_THREADS
from fedvlm.runtime import ModelSettings, peak_gpu_mb, reset_peak_memory
from fedvlm.site_metrics import EvalSettings, personalised, site_metrics, test_metrics
from fedvlm.vlm import load_peft_model
from privacy.settings import PrivacySettings
from privacy.site_account import SiteRefusalError, refusal_reply

app = ClientApp()


def _prepare(msg: Message, context: Context):
    """Parse settings, load the cached model and data, and apply the global adapter."""
    # One torch thread per client process: two processes spinning OpenMP threads on two
    # cores ran ~40x slower (docs/architecture.md). A GPU node may raise it in its node config.
    torch.set_num_threads(TORCH_THREADS.read(context.node_config))
    run = RunSettings.from_config(context.run_config)
    node = NodeSettings.from_config(context.node_config)
    site = load_site(node, run.simulation, run.seed, run.heldout_path)
    lora = site_lora(run.lora, context.node_config, run.strategy)  # a smaller rank, maybe
    runtime = ModelSettings.from_config(context.node_config, context.run_config)
    model, processor = load_peft_model(run.base_model, lora, runtime=runtime)
    global_adapter = arrayrecord_to_adapter(msg.content[contract.ARRAYS])
    start = truncate(global_adapter, lora.rank)  # the site's first components of the global
    set_adapter_state(model, start)
    return run, site, model, processor, global_adapter, start


def _meter(context: Context) -> EnergyMeter:
    """This site's energy meter: the run switches tracking, the site gives its intensity."""
    return EnergyMeter(EnergySettings.for_site(context.node_config, context.run_config))


def train_update(msg: Message, context: Context) -> tuple[Adapter, dict[str, Any]]:
    """Train the global adapter on local images; return the update and its scalar metrics.

    Shared by the plain `train` reply and the secure-aggregation masked-input stage, so
    both send the result of the very same local training (energy is metered by the caller).
    """
    run, site, model, processor, global_adapter, start = _prepare(msg, context)
    config = msg.content[contract.CONFIG]
    server_round = int(config[contract.SERVER_ROUND])
    started = time.perf_counter()
    reset_peak_memory()
    # Under sample-level DP this trains with DP-SGD, or refuses (SiteRefusalError) a round
    # that would exceed the site's ε budget; under client-level DP the update is clipped.
    # FFA-LoRA: the A factors stay at the global's, only the exchanged tensors are sent.
    freeze_a = freezes_a(config)
    with frozen_lora_a(model, freeze_a):
        stats, privacy_metrics = train_with_privacy(
            context,
            config,
            run,
            model,
            processor,
            site.train,
            seed=run.seed + 100_003 * server_round + site_seed(context),
            reference=start,
            message_id=msg.metadata.message_id,
        )
    update = outgoing(
        subtract(get_adapter_state(model), start),
        global_adapter,
        freeze_a=freeze_a,
        pad=summed_by_coordinator(context.run_config),
    )
    update = protect_update(context.run_config, update)
    # Under DP the train loss is withheld: computed on the training examples without noise,
    # it is a release no privacy account covers (README, "What the guarantee covers").
    private = PrivacySettings.from_config(context.run_config).mode != "none"
    metrics = {
        contract.NUM_EXAMPLES: len(site.train),
        **({} if private else {contract.TRAIN_LOSS: stats.mean_loss}),
        contract.TRAIN_SECONDS: time.perf_counter() - started,
        contract.BYTES_DOWN: adapter_nbytes(global_adapter),
        contract.BYTES_UP: adapter_nbytes(update),
        contract.PEAK_GPU_MB: peak_gpu_mb(),
        **privacy_metrics,
    }
    return update, metrics


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global adapter on local images and reply with the update."""
    refuse_plain_train(context)
    try:
        with _meter(context).measure() as energy:
            update, metrics = train_update(msg, context)
    except SiteRefusalError as refusal:  # budget spent or settings invalid here: no update
        return refusal_reply(msg, refusal, reading_to_metrics(energy.reading))
    content = RecordDict(
        {
            contract.ARRAYS: adapter_to_arrayrecord(update),
            contract.METRICS: MetricRecord({**metrics, **reading_to_metrics(energy.reading)}),
            contract.SITE: site_record(context),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the global adapter on this site's own validation split (scalars only).

    A site whose folder has a ``test`` split also scores it, under separate keys.

    Per question type and per subgroup (small subgroups suppressed, fedvlm/site_metrics.py);
    with `eval-personalise-steps` also after that many local steps, whose adapter stays here.
    """
    settings = EvalSettings.from_config(context.run_config, context.node_config)
    # Refuses personalisation (non-DP training on the training split) under sample-level DP.
    PrivacySettings.from_config(context.run_config)
    with _meter(context).measure() as energy:
        run, site, model, processor, _, _ = _prepare(msg, context)
        metrics = site_metrics(
            model,
            processor,
            site.val,
            fields=settings.subgroup_fields,
            min_subgroup=settings.min_subgroup,
        )
        metrics.update(test_metrics(model, processor, site.test))
        if settings.personalise_steps:
            tuned = personalised(
                model,
                processor,
                site.train,
                site.val,
                steps=settings.personalise_steps,
                lr=run.learning_rate,
                batch_size=run.batch_size,
                seed=run.seed + site_seed(context),
            )
            metrics[PERSONALISED_ACCURACY] = tuned.accuracy
            metrics[PERSONALISED_LOSS] = tuned.loss
            metrics[PERSONALISED_STEPS] = settings.personalise_steps
    metrics.update(reading_to_metrics(energy.reading))
    content = RecordDict(
        {contract.METRICS: MetricRecord(metrics), contract.SITE: site_record(context)}
    )
    return Message(content=content, reply_to=msg)


register_secure_aggregation(app, train_update, _meter)
