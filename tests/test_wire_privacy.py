"""On the real network path: a loopback TCP proxy between a SuperNode and the SuperLink.

The in-process privacy-boundary tests see Flower's protobuf; this one sees the bytes a
deployed node actually writes to its socket (plain gRPC, so the proxy can read them: the run
is ``--insecure`` on loopback for that reason only). The site's folder carries an identifier
column the run even allow-lists; no value of it may appear in the captured stream
(mutation: key every group by its value in fedvlm/site_metrics.site_metrics).
"""

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from coordinator.ledger import read_ledger
from fedvlm.data.imagefolder import write_imagefolder
from fedvlm.data.partition import synthetic_site
from fedvlm.processes import free_port

# ruff: noqa: F811
from tests.deploy_helpers import (  # noqa: F401
    RUN_CONFIG,
    RUN_TIMEOUT,
    fedvlm,
    port_open,
    processes,
    wait_for,
)
from tests.identifier_column import with_identifier

pytestmark = pytest.mark.slow


@contextmanager
def tcp_proxy(target_port: int) -> Iterator[tuple[int, bytearray]]:
    """Forward 127.0.0.1:<free port> to ``target_port``; collect what the client sends.

    Hand-written: a dozen lines of sockets and threads, no library needed for a test tap.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    captured, lock, stop = bytearray(), threading.Lock(), threading.Event()

    def pump(source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with lock:
                        captured.extend(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def accept() -> None:
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", target_port))
            except OSError:  # the SuperLink is gone (teardown): drop this client
                client.close()
                continue
            threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, False), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], captured
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_no_metadata_value_crosses_the_network(processes, tmp_path):
    site = synthetic_site(0, 2, n_train=8, n_val=4, label_alpha=0.5, acquisition_skew=0.5, seed=0)
    splits = {
        name: with_identifier(split, name[0])
        for name, split in (("train", site.train), ("validation", site.val))
    }
    values = {e.attributes["patient_ref"] for split in splits.values() for e in split}
    folder = write_imagefolder(splits, tmp_path / "site")
    port, run = free_port(), tmp_path / "runs" / "wire"
    config = {
        **RUN_CONFIG,
        "num-server-rounds": 1,
        "min-train-nodes": 1,
        "min-available-nodes": 1,
        "run-dir": str(tmp_path / "runs"),
        "run-name": "wire",
        "eval-subgroup-fields": "patient_ref,lesion_count",
        "eval-min-subgroup": 2,
    }
    args = ["coordinator", "--insecure", "--state-dir", str(tmp_path / "state")]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    for key, value in config.items():
        args += ["--run-config", f"{key}={json.dumps(value)}"]
    coordinator, log = processes.start("coordinator", fedvlm(*args))
    wait_for(lambda: port_open(port), 60, "the SuperLink", coordinator)
    with tcp_proxy(port) as (proxy_port, captured):
        node = fedvlm(
            "node", "--superlink", f"127.0.0.1:{proxy_port}", "--data", str(folder), "--insecure"
        )
        processes.start("node", node)
        assert coordinator.wait(timeout=RUN_TIMEOUT) == 0, log.read_text()[-3000:]
        sent = bytes(captured)
    rows = read_ledger(run)
    assert [r["round"] for r in rows] == [0, 1] and len(rows[1]["sites"]) == 1
    assert b"eval-n/group/patient_ref=(suppressed)" in sent  # the evaluation did cross the proxy
    for value in values:
        assert value.encode() not in sent, value
