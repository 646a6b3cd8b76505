"""The ServerApp: the coordinator's round loop, readable top to bottom in `main`.

Flower's `Strategy.start()` owns its loop, but a privacy-preserving federation must do
things between Flower's steps (validate and record every reply, account privacy, meter
energy, append the ledger and checkpoint before the next round), so the loop is written
out here while sampling, configuration and aggregation stay the strategy's (Flower's
Message-API strategies, extended in `strategies/`).
"""

import time
from functools import partial

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from coordinator import console, site_evaluation
from coordinator.central_set import central_set
from coordinator.checkpoint import open_resumed, save_checkpoint
from coordinator.energy_block import round_energy
from coordinator.exchange import prompt_replies
from coordinator.ledger import append_round, read_ledger
from coordinator.liveness import (
    RoundFailedError,
    dropped_nodes,
    evaluation_messages,
    wait_for_nodes,
)
from coordinator.privacy_guard import PrivacyGuard
from coordinator.report import build_report
from coordinator.round_record import bytes_by_node, metric_by_node, node_energy
from coordinator.run_folder import RunFolder
from coordinator.secure_phase import secure_train_phase
from coordinator.tracking import Tracker, TrackingSettings
from coordinator.train_phase import plain_train_phase
from fedvlm import contract
from fedvlm.adapter import (
    Adapter,
    adapter_to_arrayrecord,
    arrayrecord_to_adapter,
    set_adapter_state,
)
from fedvlm.config import RunSettings
from fedvlm.energy import EnergyMeter, EnergySettings, add_readings
from fedvlm.energy.settings import network_kwh_per_gb
from fedvlm.ledger_schema import LedgerRow, headline_sentence
from fedvlm.training import evaluate
from fedvlm.vlm import initial_adapter, load_peft_model
from privacy.accounting import BudgetExhaustedError
from privacy.secagg.settings import SecureAggregationSettings
from privacy.settings import PrivacySettings
from strategies import build_strategy, require_linear
from strategies.settings import StrategySettings

app = ServerApp()


def evaluate_at_sites(
    strategy: Strategy,
    grid: Grid,
    server_round: int,
    arrays: ArrayRecord,
    timeout: float,
    survivors: list[int] | None = None,
) -> tuple[list[Message], dict]:
    """Federated evaluation on each site's own validation split (scalars only).

    Only the round's train `survivors` that are still connected are asked (all connected
    nodes when None), so a site that died mid-round cannot stall the round
    (coordinator/liveness.py). Returns the replies and the round's ``site_eval`` block: each
    site's figures, weighted mean, worst site, fairness gap, and the nodes asked that did not
    answer (Flower's own aggregate_evaluate refuses replies whose per-type/per-group keys
    differ by site).
    """
    sent = evaluation_messages(strategy, grid, server_round, arrays, survivors)
    replies = list(grid.send_and_receive(sent, timeout=timeout)) if sent else []
    block = site_evaluation.round_block(replies)
    block["dropped"] = dropped_nodes(sent, replies)
    return replies, block


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation: rounds of train, aggregate, evaluate, record."""
    torch.set_num_threads(1)
    grid = prompt_replies(grid)  # replies collected as they arrive (coordinator/exchange.py)
    run = RunSettings.from_config(context.run_config)
    secagg = SecureAggregationSettings.from_config(context.run_config)
    # A `resume` run continues in the interrupted run's folder (coordinator/checkpoint.py).
    resumed = open_resumed(context.run_config)
    folder = RunFolder(resumed[0]) if resumed else RunFolder.create(run, dict(context.run_config))
    # Optional mirror of every ledger figure in TensorBoard / MLflow (coordinator/tracking.py).
    tracker = Tracker(
        TrackingSettings.from_config(context.run_config), folder.path, folder.path.name
    )

    def record(row: LedgerRow) -> None:
        append_round(folder.path, row)
        tracker.log_round(row.to_json())

    model, processor = load_peft_model(run.base_model, run.lora)
    # A held-out folder, the synthetic set (synthetic sites only), or None: then the
    # sites' own validation accuracy is the headline (coordinator/central_set.py).
    heldout = central_set(run)
    # The global adapter has the run's lora-rank, the largest any site may train (a site
    # declares a smaller one in its node config); FLoRA's stacked global is capped at it.
    strategy_settings = StrategySettings.from_config(context.run_config)
    strategy = build_strategy(
        run.strategy,
        fraction_train=run.fraction_train,
        # Many simulated sites: evaluating every one each round would outweigh training.
        fraction_evaluate=run.fraction_evaluate,
        min_train_nodes=run.min_train_nodes,
        min_evaluate_nodes=run.min_train_nodes,
        min_available_nodes=run.min_available_nodes,
        **strategy_settings.kwargs_for(run.strategy, global_rank=run.lora.rank),
    )
    # With secure aggregation the coordinator only ever learns the sum of the updates.
    if secagg.enabled:
        require_linear(strategy, "secure aggregation is on (secure-aggregation = true)")
        too_small = secagg.dropout_warning(max(run.min_available_nodes, 2))
        if too_small:
            print(f"fedvlm: warning: {too_small}", flush=True)
    # Differential privacy: checks at start-up, budget before each round, noise, accounts.
    guard = PrivacyGuard(
        PrivacySettings.from_config(context.run_config), run, strategy, folder.federation_id
    )
    train_phase = (
        partial(
            secure_train_phase,
            settings=secagg,
            add_noise=guard.add_noise if guard.client is not None else None,
            # Sample level: refusals arrive at the masked-input stage; record them there.
            record_replies=guard.observe if guard.sample is not None else None,
        )
        if secagg.enabled
        else partial(plain_train_phase, aggregate=guard.aggregate if guard.active else None)
    )
    train_config = ConfigRecord(
        {
            contract.LOCAL_STEPS: run.local_steps,
            contract.LEARNING_RATE: run.learning_rate,
            contract.BATCH_SIZE: run.batch_size,
            contract.SEED: run.seed,
        }
    )
    global_adapter: Adapter = initial_adapter(run.base_model, run.lora)
    set_adapter_state(model, global_adapter)
    warning = guard.snr_warning(global_adapter)
    if warning:
        print(f"fedvlm: warning: {warning}", flush=True)
    meter = EnergyMeter(EnergySettings.for_coordinator(context.run_config))
    kwh_per_gb = network_kwh_per_gb(context.run_config)

    first_round = 1
    if resumed is None:
        evaluated_on = {"kind": "sites"} if heldout is None else heldout.source
        first = LedgerRow(round=0, sites=[], evaluated_on=evaluated_on)
        if heldout is not None:
            base = evaluate(model, processor, heldout.examples)
            first.heldout_accuracy, first.heldout_loss = base.accuracy, base.loss
        else:  # the sites evaluate the initial adapter: the "before" of the headline
            wait_for_nodes(grid, run.min_available_nodes, run.node_wait_timeout)
            _, site_eval = evaluate_at_sites(
                strategy, grid, 0, adapter_to_arrayrecord(global_adapter), run.round_timeout
            )
            first.fed_eval_accuracy = site_eval.get("weighted_accuracy")
            first.site_eval = site_eval
        record(first)
    else:  # continue after the last checkpointed round, RNGs and strategy state as they were
        checkpoint = resumed[1]
        global_adapter = checkpoint.adapter
        set_adapter_state(model, global_adapter)
        checkpoint.restore(strategy)
        guard.load_state_dict(checkpoint.extra)
        first_round = checkpoint.server_round + 1
        print(f"fedvlm: resuming after round {checkpoint.server_round}", flush=True)
    recorded = read_ledger(folder.path)
    energy_so_far = recorded[-1].get("energy")  # cumulative totals carry over a resume
    print(f"fedvlm: run folder {folder.path}", flush=True)
    print(console.header(), flush=True)
    print(console.row_line(recorded[0]), flush=True)

    for server_round in range(first_round, run.num_rounds + 1):
        started = time.perf_counter()
        # 1. Train: send the global adapter, receive updates (never base weights), aggregate.
        try:
            # Flower's sampling would wait forever for min-available-nodes: bound that wait.
            wait_for_nodes(grid, run.min_available_nodes, run.node_wait_timeout)
            guard.before_round(grid)
            trained = train_phase(
                strategy,
                grid,
                server_round,
                global_adapter,
                guard.train_config(train_config),
                timeout=run.round_timeout,
                min_replies=run.min_train_nodes,
                meter=meter,
            )
        except BudgetExhaustedError as spent:  # nothing was released this round: stop here
            record(
                LedgerRow(
                    round=server_round, sites=[], stopped=str(spent), privacy=guard.ledger_block()
                )
            )
            print(f"fedvlm: privacy budget exhausted, run ends: {spent}", flush=True)
            break
        except RoundFailedError as failed:  # on record before the run stops (resumable)
            with meter.measure() as idle:  # the coordinator did no metered work this round
                pass
            energy = round_energy(
                node_energy(failed.replies),
                idle.reading,
                bytes_by_node(failed.replies),
                failed.bytes_down,
                kwh_per_gb,
                previous=energy_so_far,
            )
            stop = LedgerRow(
                round=server_round,
                sites=[],
                stopped=str(failed),
                energy=energy,
                privacy=guard.ledger_block(),
                **failed.details,
            )
            append_round(folder.path, stop)
            print(f"fedvlm: {failed}", flush=True)
            raise
        refused = {r.node_id for r in guard.refusals}
        new_global = trained.new_global
        global_adapter = arrayrecord_to_adapter(new_global)
        set_adapter_state(model, global_adapter)

        # 2. Federated evaluation on each site's own validation split (scalars only).
        eval_replies, site_eval = evaluate_at_sites(
            strategy,
            grid,
            server_round,
            new_global,
            run.round_timeout,
            survivors=[m.metadata.src_node_id for m in trained.replies if not m.has_error()],
        )

        # 3. Central evaluation on the coordinator's own held-out set, if it has one.
        with meter.measure() as central_eval:
            central = None if heldout is None else evaluate(model, processor, heldout.examples)

        # 4. Record the round before the next one starts.
        energy_so_far = round_energy(
            node_energy(trained.replies, eval_replies),
            add_readings(trained.aggregation_energy, central_eval.reading),
            trained.bytes_up,
            trained.bytes_down,
            kwh_per_gb,
            previous=energy_so_far,
        )
        row = LedgerRow(
            round=server_round,
            sites=sorted(
                m.metadata.src_node_id
                for m in trained.replies
                if m.metadata.src_node_id not in refused
            ),
            # Node id -> the site's own name (fedvlm.contract.SITE_NAME): the reader's view.
            site_names=site_evaluation.site_names([*trained.replies, *eval_replies]),
            dropped=trained.dropped,
            rejected=[vars(r) for r in getattr(strategy, "last_rejections", [])],
            secagg_notes=trained.secagg_notes or None,
            secagg=trained.secagg or None,
            train_loss=None
            if trained.metrics is None
            else trained.metrics.get(contract.TRAIN_LOSS),
            fed_eval_accuracy=site_eval.get("weighted_accuracy"),
            site_eval=site_eval,
            bytes_down=trained.bytes_down,
            bytes_up=sum(trained.bytes_up.values()),
            energy=energy_so_far,
            peak_gpu_mb=metric_by_node(trained.replies, contract.PEAK_GPU_MB),
            train_seconds=metric_by_node(trained.replies, contract.TRAIN_SECONDS),
            seconds=time.perf_counter() - started,
            privacy=guard.ledger_block(),
        )
        if central is not None:
            row.heldout_accuracy, row.heldout_loss = central.accuracy, central.loss
            row.heldout_by_type = {k: acc for k, (_, acc) in central.by_type.items()}
        record(row)
        save_checkpoint(
            folder.path,
            server_round,
            global_adapter,
            strategy,
            context.run_config,
            extra=guard.state_dict(),
        )
        print(console.row_line(row.to_json(), run.num_rounds), flush=True)

    tracker.close()
    folder.save_adapter(model)
    report = build_report(folder.path)  # plots, model card and report.html, from the ledger
    print(
        f"fedvlm: {headline_sentence(report['summary']['headline'])}; "
        f"adapter saved to {folder.path / 'adapter'}",
        flush=True,
    )
