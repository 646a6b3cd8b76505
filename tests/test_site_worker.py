"""The warm site worker is an optimisation, not a fork.

- the per-message ClientApp (`client.node_app`) imports no torch;
- it forwards every message type the full ClientApp handles;
- a real worker process (started by the node's `WorkerSupervisor`) gives bit-identical
  adapters to the cold path (fresh caches per message) with the same seeds on CPU;
- a killed worker is restarted by the node and the next message (retried on the
  restarted worker) gets the same update as on the cold path, also when the worker is
  killed in the middle of a message; a message that fails on both attempts raises (Flower's
  error reply), never a wrong result;
- a retried message is accounted once by the sample-level DP account.
"""

import json
import subprocess
import sys

import numpy as np
import psutil
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

import client.app as full
from client import node_app
from client.site_data import load_site
from client.worker_channel import WORKER_SOCKET, ChannelBrokenError
from client.worker_supervisor import WorkerSupervisor
from fedvlm import contract
from fedvlm.adapter import adapter_to_arrayrecord, get_adapter_state
from fedvlm.config import RunSettings
from fedvlm.data.imagefolder import write_imagefolder
from fedvlm.data.partition import synthetic_site
from fedvlm.processes import child_env
from fedvlm.vlm import load_peft_model

pytestmark = pytest.mark.usefixtures("serverapp_identity")
RUN_CONFIG = {"local-steps": 2, "batch-size": 4, "seed": 0, "energy-tracking": False}


def test_node_app_imports_no_torch():
    code = "import sys, client.node_app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_handled_message_type_is_forwarded():
    assert set(node_app.app._registered_funcs) == set(full.app._registered_funcs)


def _messages(global_adapter, rounds):
    out = []
    for server_round in rounds:
        config = ConfigRecord(
            {
                contract.SERVER_ROUND: server_round,
                contract.LOCAL_STEPS: 2,
                contract.LEARNING_RATE: 3e-3,
                contract.BATCH_SIZE: 4,
                contract.SEED: 0,
            }
        )
        arrays = adapter_to_arrayrecord(global_adapter)
        out.append(
            Message(
                RecordDict({contract.ARRAYS: arrays, contract.CONFIG: config}), 7, MessageType.TRAIN
            )
        )
    return out


@pytest.fixture
def folder(tmp_path):
    site = synthetic_site(0, 2, n_train=8, n_val=4, label_alpha=0.5, acquisition_skew=0.5, seed=0)
    return write_imagefolder({"train": site.train, "validation": site.val}, tmp_path / "site")


def _context(folder, socket=None):
    node_config = {"data-path": str(folder)}
    if socket is not None:
        node_config[WORKER_SOCKET] = str(socket)
    return Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=RUN_CONFIG
    )


def _arrays(reply):
    assert not reply.has_error(), reply.error
    return {k: a.numpy() for k, a in reply.content[contract.ARRAYS].items()}


def test_warm_worker_gives_bit_identical_adapters_and_survives_a_kill(folder):
    run = RunSettings.from_config(RUN_CONFIG)
    model, _ = load_peft_model(run.base_model, run.lora)
    messages = _messages(get_adapter_state(model), (1, 2, 3))

    cold = []
    for message in messages:  # a fresh process per message: nothing cached
        load_peft_model.cache_clear()
        load_site.cache_clear()
        cold.append(_arrays(node_app.app(message, _context(folder))))

    with WorkerSupervisor(child_env()) as worker:
        context = _context(folder, worker.socket)
        warm = [_arrays(node_app.app(m, context)) for m in messages[:2]]
        first = worker.process.pid
        # A worker that died (SIGKILL, as an out-of-memory kill would): the node restarts
        # it and the message is answered by the restarted worker with the right update.
        victim = psutil.Process(first)
        victim.kill()
        victim.wait(timeout=10)
        warm.append(_arrays(node_app.app(messages[2], context)))
        assert worker.starts == 2 and worker.process.pid != first

    for c, w in zip(cold, warm, strict=True):
        assert c.keys() == w.keys()
        for key in c:
            np.testing.assert_array_equal(c[key], w[key])  # bit-identical


def _with_id(message: Message, message_id: str) -> Message:
    message.metadata.__dict__["_message_id"] = message_id  # as Flower sets it on delivery
    return message


def test_a_retried_message_is_accounted_once(folder, site_state_dir):
    """The worker writes the sample-level account before its reply leaves; if it dies then,
    the retry of the same message must not add that round's steps a second time."""
    run_config = {
        **RUN_CONFIG,
        "dp-mode": "sample",
        "dp-noise-multiplier": 1.0,
        "dp-target-epsilon": 50.0,
    }
    run = RunSettings.from_config(run_config)
    model, _ = load_peft_model(run.base_model, run.lora)
    first, retry, second = _messages(get_adapter_state(model), (1, 1, 2))
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"data-path": str(folder)},
        state=RecordDict(),
        run_config=run_config,
    )
    account = site_state_dir / "privacy" / "default.site-7.json"

    def steps() -> int:
        return sum(json.loads(account.read_text())["steps"])

    _arrays(full.app(_with_id(first, "round-1"), context))
    assert steps() == 2
    _arrays(full.app(_with_id(retry, "round-1"), context))  # its first reply was lost
    assert steps() == 2
    _arrays(full.app(_with_id(second, "round-2"), context))
    assert steps() == 4


def test_a_worker_killed_mid_message_is_restarted_and_the_retry_gives_the_cold_result(
    folder, monkeypatch
):
    """SIGKILL the worker after it has received a message and before it replies: the
    ClientApp retries once on the restarted worker, and the reply is the cold path's."""
    run = RunSettings.from_config(RUN_CONFIG)
    model, _ = load_peft_model(run.base_model, run.lora)
    [message] = _messages(get_adapter_state(model), (1,))
    load_peft_model.cache_clear()
    load_site.cache_clear()
    cold = _arrays(node_app.app(message, _context(folder)))

    with WorkerSupervisor(child_env()) as worker:
        first = worker.process.pid
        sent = []

        def send_then_kill(conn, *frames):
            node_app_send(conn, *frames)
            if not sent:  # only the first attempt: the request is in the worker's socket
                victim = psutil.Process(first)
                victim.kill()
                victim.wait(timeout=10)
            sent.append(len(frames))

        node_app_send = node_app.send_frames
        monkeypatch.setattr(node_app, "send_frames", send_then_kill)
        context = _context(folder, worker.socket)
        warm = _arrays(node_app.app(message, context))
        assert sent == [2, 2]  # sent twice: the attempt that was killed and the retry
        assert worker.starts == 2 and worker.process.pid != first

    assert cold.keys() == warm.keys()
    for key in cold:
        np.testing.assert_array_equal(cold[key], warm[key])


def test_a_worker_that_dies_on_every_attempt_gives_an_error_reply(folder, monkeypatch):
    """Never a wrong result: when the retry fails too, Flower's error reply is what goes back
    (the coordinator records the site as dropped for the round)."""
    monkeypatch.setattr(node_app, "RESTART_WAIT", 0.0)
    run = RunSettings.from_config(RUN_CONFIG)
    model, _ = load_peft_model(run.base_model, run.lora)
    [message] = _messages(get_adapter_state(model), (1,))
    state = RecordDict({"kept": ConfigRecord({"x": 1})})
    context = Context(
        run_id=1,
        node_id=7,
        state=state,
        run_config=RUN_CONFIG,
        node_config={"data-path": str(folder), WORKER_SOCKET: str(folder / "no-worker.sock")},
    )
    with pytest.raises(ChannelBrokenError):
        node_app.app(message, context)
    assert context.state["kept"]["x"] == 1  # the node state is left as it was
