"""Keep a node's site worker running for as long as the node runs.

`fedvlm node` starts the worker before ``flower-supernode`` and stops it after; in between,
a worker that exits (a crash, an out-of-memory kill) is started again, so the next message
(and the retry of the one it was handling, `client.node_app`) finds a warm worker again.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from client.worker_channel import socket_folder
from fedvlm.processes import start_process, stop_process_group

RESTART_DELAY = 1.0  # seconds between a worker's exit and its restart (no busy loop)


class WorkerSupervisor:
    """Start, restart and finally stop one site worker process.

    Parameters
    ----------
    env : mapping
        The worker's environment: the SuperNode's (threads, offline, device variables).
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.socket = socket_folder() / "worker.sock"
        self.starts = 0
        self.process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._keep_running, daemon=True)

    def command(self) -> list[str]:
        """The worker's command line (this Python, the project's module)."""
        return [sys.executable, "-m", "client.site_worker", "--socket", str(self.socket)]

    def start(self) -> WorkerSupervisor:
        """Start the worker and the thread that restarts it."""
        self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen | None:
        with self._lock:
            if self._stopping.is_set():  # `stop` came first: start nothing more
                return None
            self.process = start_process(self.command(), self.env, sink=None)
            self.starts += 1
            return self.process

    def _keep_running(self) -> None:
        process = self.process
        while process is not None:
            code = process.wait()
            if self._stopping.wait(RESTART_DELAY):
                return
            print(f"fedvlm: site worker exited ({code}); restarting it", file=sys.stderr)
            process = self._spawn()

    def stop(self) -> None:
        """Stop the worker for good and remove its socket folder."""
        self._stopping.set()
        with self._lock:
            if self.process is not None:
                stop_process_group(self.process, grace=5)
        self.socket.unlink(missing_ok=True)
        Path(self.socket.parent).rmdir()

    def __enter__(self) -> WorkerSupervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
