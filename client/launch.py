"""Join a deployed federation from a site with one command, after checking the data.

A site operator's mistakes in ``metadata.jsonl`` would otherwise surface minutes later as a
traceback in a ClientApp subprocess on the first round, seen by nobody at the site. So the
image folder is validated here first (every problem named by file and line) and
``flower-supernode`` is started only on a valid folder, with TLS, the site's private key
and ``--node-config 'data-path="..."'`` plus the site's own settings.
"""

import contextlib
import shlex
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from client.prompt_supernode import POLL_ENV
from client.worker_channel import WORKER_ENABLED, WORKER_SOCKET
from client.worker_supervisor import WorkerSupervisor
from fedvlm.credentials import require_private
from fedvlm.data.imagefolder import validate_imagefolder
from fedvlm.errors import FedVLMError
from fedvlm.flower_toml import inline_config
from fedvlm.processes import (
    TORCH_THREADS,
    child_env,
    exit_on_sigterm,
    free_port,
    start_process,
    stop_process_group,
)

# flwr 1.42's flower-superexec (started by flower-supernode, inheriting its environment) asks
# its SuperNode for a task every FLWR_SUPEREXEC_TASK_POLL_INTERVAL seconds, 1.0 unless set;
# the SuperNode itself polls the SuperLink every 3 s when idle (client/prompt_supernode.py
# shortens that, from POLL_ENV seconds). Each wait delays every message, two or more per
# round; each poll is a request (the SuperExec's stays on this host).
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
POLL_SECONDS = {SUPEREXEC_POLL_ENV: 0.25, POLL_ENV: 0.1}

INSECURE_WARNING = (
    "WARNING: --insecure: this node talks to the SuperLink WITHOUT TLS and WITHOUT node "
    "authentication; only for a trusted loopback or lab network."
)


@dataclass(frozen=True)
class NodeOptions:
    """How one site joins (validated by `check`).

    Attributes
    ----------
    superlink : str
        The SuperLink's ``host:port``; the host must be in its certificate's names.
    data_path : Path
        The site's image folder (``metadata.jsonl`` + images).
    root_certificates : Path or None
        The federation's CA certificate (``ca.crt``).
    private_key : Path or None
        This site's OpenSSH EC private key (``<site>.key``); its ``.pub`` is registered
        at the coordinator.
    settings : dict
        Further node-config values (``carbon-intensity``, ``country-iso-code``,
        ``torch-threads``, ``lora-rank``...), TOML scalars.
    port : int or None
        Port of this SuperNode's local ClientApp API (unique per node on a host; free
        port if None).
    insecure : bool
        No TLS, no authentication (prints a warning).
    cold : bool
        No site worker: Flower's fresh ClientApp process per message loads the model and
        data each time (today's behaviour; also ``site-worker = false`` in ``settings``).
    """

    superlink: str
    data_path: Path
    root_certificates: Path | None = None
    private_key: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    port: int | None = None
    insecure: bool = False
    cold: bool = False

    @property
    def warm(self) -> bool:
        """Whether this node keeps a site worker (client/site_worker.py) warm."""
        return not self.cold and bool(self.settings.get(WORKER_ENABLED, True))

    def check(self) -> None:
        """Refuse contradictory or missing files, naming the flag."""
        if self.insecure:
            if self.private_key is not None:
                raise FedVLMError("--insecure cannot use --private-key: node auth needs TLS")
            return
        for flag, path in (
            ("--ca-cert", self.root_certificates),
            ("--private-key", self.private_key),
        ):
            if path is None:
                raise FedVLMError(f"{flag} is required (or --insecure on a trusted network)")
            if not path.is_file():
                raise FedVLMError(f"{flag}: {path} does not exist")
        assert self.private_key is not None
        require_private(self.private_key, "--private-key")


def node_config_text(data_path: Path, settings: Mapping[str, Any]) -> str:
    """Flower's ``--node-config`` value: space-separated ``key=value`` with TOML values."""
    return inline_config({"data-path": str(data_path.resolve()), **settings}, "--node-config")


def supernode_command(opts: NodeOptions, port: int) -> list[str]:
    """The `flower-supernode` command line for these options (run as `client.prompt_supernode`:
    Flower's SuperNode with its idle poll shortened)."""
    command = [sys.executable, "-m", "client.prompt_supernode", "--superlink", opts.superlink]
    if opts.insecure:
        command.append("--insecure")
    else:
        command += [
            "--root-certificates",
            str(opts.root_certificates),
            "--auth-supernode-private-key",
            str(opts.private_key),
        ]
    return command + [
        "--node-config",
        node_config_text(opts.data_path, opts.settings),
        "--port",
        str(port),
    ]


def check_data(path: Path) -> dict:
    """Validate a site folder; return its summary or raise DataError naming file and line."""
    if not path.is_dir():
        raise FedVLMError(f"data folder {path} does not exist")
    return validate_imagefolder(path)


def run_node(opts: NodeOptions) -> int:
    """Check the data, then run `flower-supernode` in the foreground; return its exit code.

    Unless ``opts.cold``, a site worker is started first and kept running beside it (its
    socket in the node config), so the model and data stay loaded across messages.
    Ctrl-C or a failure here stops the SuperNode, the worker and the ClientApp processes.
    """
    exit_on_sigterm()
    opts.check()
    summary = check_data(opts.data_path)
    print(
        f"fedvlm: {summary['path']}: {summary['examples']} examples on {summary['images']} "
        f"images, splits {summary['splits']}",
        flush=True,
    )
    if opts.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
        refuse_tls_link_when_insecure(opts.superlink)
    threads = TORCH_THREADS.read(opts.settings)
    env = {**child_env(threads=threads), **{k: str(v) for k, v in POLL_SECONDS.items()}}
    with contextlib.ExitStack() as stack:
        if opts.warm:  # same environment (threads, device variables) as the SuperNode's
            worker = stack.enter_context(WorkerSupervisor(env))
            opts = replace(opts, settings={**opts.settings, WORKER_SOCKET: str(worker.socket)})
            print(f"fedvlm: site worker {worker.process.pid} on {worker.socket}", flush=True)
        command = supernode_command(opts, opts.port or free_port())
        print("+ " + shlex.join(command), flush=True)
        process = start_process(command, env, sink=subprocess.PIPE)
        assert process.stdout is not None
        refused = threading.Event()
        # A thread, not a loop here: Flower's detached helpers inherit the pipe and keep it
        # open after flower-supernode itself has exited.
        forwarder = threading.Thread(
            target=_forward_output, args=(process.stdout, refused), daemon=True
        )
        forwarder.start()
        try:
            code = process.wait()
        finally:
            stop_process_group(process)
        forwarder.join(timeout=5)
    if code != 0 and refused.is_set():
        print(f"fedvlm: error: {NOT_REGISTERED.format(key=opts.private_key)}", file=sys.stderr)
    return code


# flower-supernode prints this when the SuperLink turns its key down; the reason ("No
# SuperNode found with the given public key") is only in the SuperLink's own log.
ACTIVATION_FAILED = "Failed to activate SuperNode"
NOT_REGISTERED = (
    "the SuperLink refused this node: its public key is not registered there. Send the "
    "public key of {key} (the .pub beside it) to the coordinator, who registers it "
    "(`fedvlm coordinator --site-key`, or `flwr supernode register`), then start again"
)


def _forward_output(stream: IO[bytes], refused: threading.Event) -> None:
    """Pass the SuperNode's output through; set `refused` if it says its key was refused."""
    for raw in stream:
        line = raw.decode(errors="replace")
        if ACTIVATION_FAILED in line:
            refused.set()
        sys.stdout.write(line)
        sys.stdout.flush()


def refuse_tls_link_when_insecure(address: str, timeout: float = 5.0) -> None:
    """Stop an ``--insecure`` node at once if the SuperLink speaks TLS.

    Why: flower-supernode without TLS against a TLS SuperLink retries silently forever. A
    TLS handshake that completes (certificate not checked: only the protocol is probed)
    proves the link wants TLS; a link not up yet or a plain one is left to the SuperNode.

    Raises
    ------
    FedVLMError
        Naming ``--insecure`` and what to give instead.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            pass
    except (OSError, ValueError):
        return  # not reachable yet, or no TLS: the SuperNode reports what it finds
    raise FedVLMError(
        f"--insecure: the SuperLink at {address} speaks TLS, and a node without TLS would "
        "retry forever; start the node with --ca-cert ca.crt --private-key <site>.key"
    )
