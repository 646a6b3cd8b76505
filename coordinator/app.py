"""The ServerApp: the coordinator's round loop, readable top to bottom in `main`.

Flower's `Strategy.start()` owns its loop, but a privacy-preserving federation must do
things between Flower's steps (validate and record every reply, account privacy, meter
energy, append the ledger and checkpoint before the next round), so the loop is written
out here while sampling, configuration and aggregation stay the strategy's (Flower's
Message-API strategies, extended in `strategies/`).
"""

import time

import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from coordinator import console
from coordinator.ledger import append_round
from coordinator.run_folder import RunFolder
from fedvlm import contract
from fedvlm.adapter import (
    Adapter,
    adapter_nbytes,
    adapter_to_arrayrecord,
    arrayrecord_to_adapter,
    get_adapter_state,
    set_adapter_state,
)
from fedvlm.config import RunSettings
from fedvlm.data.site import heldout_set
from fedvlm.training import evaluate
from fedvlm.vlm import load_peft_model
from strategies import build_strategy

app = ServerApp()


def _payload_bytes(messages: list[Message]) -> int:
    """Adapter bytes carried by the ArrayRecords of these messages."""
    return sum(
        adapter_nbytes(arrayrecord_to_adapter(m.content[contract.ARRAYS]))
        for m in messages
        if not m.has_error() and contract.ARRAYS in m.content
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation: rounds of train, aggregate, evaluate, record."""
    torch.set_num_threads(1)
    run = RunSettings.from_config(context.run_config)
    folder = RunFolder.create(run, dict(context.run_config))
    model, processor = load_peft_model(run.base_model, run.lora)
    heldout = heldout_set(run.simulation.heldout_examples, seed=run.seed)
    strategy = build_strategy(
        run.strategy,
        fraction_train=run.fraction_train,
        min_train_nodes=run.min_train_nodes,
        min_evaluate_nodes=run.min_train_nodes,
        min_available_nodes=run.min_available_nodes,
    )
    train_config = ConfigRecord(
        {
            contract.LOCAL_STEPS: run.local_steps,
            contract.LEARNING_RATE: run.learning_rate,
            contract.BATCH_SIZE: run.batch_size,
            contract.SEED: run.seed,
        }
    )
    global_adapter: Adapter = get_adapter_state(model)

    base = evaluate(model, processor, heldout)
    append_round(
        folder.path,
        {"round": 0, "heldout_accuracy": base.accuracy, "heldout_loss": base.loss, "sites": []},
    )
    print(f"fedvlm: run folder {folder.path}", flush=True)
    print(console.header(), flush=True)
    print(console.row_line({"round": 0, "heldout_accuracy": base.accuracy}), flush=True)

    for server_round in range(1, run.num_rounds + 1):
        started = time.perf_counter()

        # 1. Train: send the global adapter, receive updates (never base weights).
        outgoing = list(
            strategy.configure_train(
                server_round, adapter_to_arrayrecord(global_adapter), train_config, grid
            )
        )
        replies = list(grid.send_and_receive(outgoing, timeout=run.round_timeout))
        new_global, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_global is None:
            raise RuntimeError(
                f"round {server_round}: no valid update arrived from {len(outgoing)} sampled "
                "sites; see the rejections in the ledger and the sites' logs"
            )
        global_adapter = arrayrecord_to_adapter(new_global)
        set_adapter_state(model, global_adapter)

        # 2. Federated evaluation on each site's own validation split (scalars only).
        eval_replies = list(
            grid.send_and_receive(
                list(strategy.configure_evaluate(server_round, new_global, ConfigRecord(), grid)),
                timeout=run.round_timeout,
            )
        )
        fed_metrics = strategy.aggregate_evaluate(server_round, eval_replies)

        # 3. Central evaluation on the coordinator's own held-out set.
        central = evaluate(model, processor, heldout)

        # 4. Record the round before the next one starts.
        row = {
            "round": server_round,
            "sites": sorted(m.metadata.src_node_id for m in replies if not m.has_error()),
            "dropped": sorted(m.metadata.src_node_id for m in replies if m.has_error()),
            "rejected": [vars(r) for r in getattr(strategy, "last_rejections", [])],
            "train_loss": None if train_metrics is None else train_metrics.get(contract.TRAIN_LOSS),
            "fed_eval_accuracy": None
            if fed_metrics is None
            else fed_metrics.get(contract.EVAL_ACCURACY),
            "heldout_accuracy": central.accuracy,
            "heldout_loss": central.loss,
            "heldout_by_type": {k: acc for k, (_, acc) in central.by_type.items()},
            "bytes_down": _payload_bytes(outgoing),
            "bytes_up": _payload_bytes(replies),
            "seconds": time.perf_counter() - started,
        }
        append_round(folder.path, row)
        print(console.row_line(row), flush=True)

    folder.save_adapter(model)
    print(
        f"fedvlm: held-out accuracy {base.accuracy:.3f} -> {central.accuracy:.3f}; "
        f"adapter saved to {folder.path / 'adapter'}",
        flush=True,
    )
