"""The deployment subcommands of `fedvlm`: credentials, coordinator, node, check-data.

Kept apart from `cli.main` so the dispatcher stays short; like it, each handler imports the
launcher it dispatches to (coordinator, client) inside the handler, so that `fedvlm
credentials` does not load torch.
"""

import argparse
import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedvlm.credentials import certify_site, make_credentials, make_site_key
from fedvlm.data.imagefolder import validate_imagefolder
from fedvlm.errors import FedVLMError


def parse_pairs(pairs: Sequence[str], flag: str) -> dict:
    """`key=value` pairs with TOML values (as Flower's --run-config / --node-config)."""
    text = "\n".join(pairs)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FedVLMError(f"{flag}: cannot parse {text!r} as key=value pairs: {exc}") from exc


def _credentials(args: argparse.Namespace) -> int:
    if args.certify:  # the CA's folder certifies a site's public key it was sent
        for site in args.certify:
            cert = certify_site(Path(args.out).expanduser(), site, force=args.force, days=args.days)
            print(f"fedvlm: site {site} gets {cert} (its identity for secure aggregation)")
        return 0
    if args.sites_only:  # a new site joins: its key pair only, CA and server untouched
        for site in args.site:
            private, public = make_site_key(Path(args.out).expanduser(), site, force=args.force)
            print(f"fedvlm: site {site} gets {private} (secret, 0600); register {public}")
            print(f"  and have the CA's folder certify it: fedvlm credentials --certify {site}")
        return 0
    hosts = list(dict.fromkeys([*args.host, "localhost", "127.0.0.1"]))
    made = make_credentials(
        args.out, hosts=hosts, sites=args.site, force=args.force, days=args.days
    )
    print(f"fedvlm: wrote credentials to {made.folder} (certificate names: {', '.join(hosts)})")
    print(f"  coordinator host keeps: {made.ca_cert.name}, {made.server_cert.name}, ")
    print(f"    {made.server_key.name} (secret), ca.key (secret, offline if you can), *.pub")
    for site, (private, public) in made.site_keys.items():
        cert = made.site_certs[site].name
        print(f"  site {site} gets: {made.ca_cert.name}, {cert} and {private.name} (secret, 0600);")
        print(f"    the coordinator registers {public.name}")
    return 0


def _coordinator(args: argparse.Namespace) -> int:
    from coordinator.launch import PROJECT_ROOT, CoordinatorOptions, run_coordinator
    from coordinator.run_folder import saved_run_config

    run_config = parse_pairs(args.run_config, "--run-config")
    if args.resume:  # the interrupted run's settings, from its folder; flags may add to them
        folder = Path(args.resume).expanduser()
        if not folder.is_dir():  # a run name under run-dir
            folder = Path(str(run_config.get("run-dir", "runs"))).expanduser() / args.resume
        run_config = {**saved_run_config(folder), **run_config, "resume": str(folder.resolve())}
    # Deployed sites hold their own images: no synthetic held-out figure (central_set.py).
    run_config.setdefault("site-data", "folders")
    if run_config.get("heldout-path"):  # checked whole before the SuperLink starts
        heldout = Path(str(run_config["heldout-path"])).expanduser().resolve()
        validate_imagefolder(heldout, require_splits=False)
        run_config["heldout-path"] = str(heldout)  # the ServerApp runs in another directory
    keys = [Path(k).expanduser().resolve() for k in args.site_key]
    credentials = Path(args.credentials).expanduser().resolve() if args.credentials else None
    if credentials is not None and not keys and not args.insecure:
        keys = sorted(credentials.glob("*.pub"))
    options = CoordinatorOptions(
        credentials=credentials,
        site_keys=keys,
        state_dir=Path(args.state_dir).expanduser().resolve(),
        host=args.host,
        port=args.port,
        run_config=run_config,
        insecure=args.insecure,
        keep_running=args.keep_running,
        project=Path(args.project).expanduser().resolve() if args.project else PROJECT_ROOT,
    )
    folder = run_coordinator(options)
    print(f"fedvlm: run folder {folder}")
    return 0


def _absolute(path: str | None) -> Path | None:
    return Path(path).expanduser().resolve() if path else None


def node_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The node config `fedvlm node` passes on: the site's own pairs plus what its files imply.

    Paths are made absolute here: the ClientApp and the site worker run in other working
    directories, where a relative `creds/site-0.key` names nothing.
    """
    settings = parse_pairs(args.node_config, "--node-config")
    settings.setdefault("torch-threads", args.torch_threads)
    if args.private_key:  # the name the site registered under (`fedvlm credentials --site`)
        settings.setdefault("site-name", Path(args.private_key).stem)
        # Its secure-aggregation identity: the same key, <site>.crt next to it, the CA.
        settings.setdefault("secagg-identity-key", str(_absolute(args.private_key)))
    if args.ca_cert:
        settings.setdefault("secagg-ca-cert", str(_absolute(args.ca_cert)))
    return settings


def _node(args: argparse.Namespace) -> int:
    from client.launch import NodeOptions, run_node

    options = NodeOptions(
        superlink=args.superlink,
        data_path=_absolute(args.data),
        root_certificates=_absolute(args.ca_cert),
        private_key=_absolute(args.private_key),
        settings=node_settings(args),
        port=args.port,
        insecure=args.insecure,
        cold=args.cold,
    )
    return run_node(options)


def _check_data(args: argparse.Namespace) -> int:
    from client.launch import check_data

    summary = check_data(Path(args.path).expanduser())
    print(json.dumps(summary, indent=2))
    print(f"fedvlm: {args.path} is a valid site folder")
    return 0


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    """Add the deployment subcommands to the `fedvlm` parser."""
    cred = sub.add_parser(
        "credentials", help="make a CA, the SuperLink's TLS certificate and per-site keys"
    )
    cred.add_argument("--out", default="credentials", help="folder to write (./credentials)")
    cred.add_argument(
        "--host",
        action="append",
        default=[],
        help="DNS name or IP sites use to reach the SuperLink (repeat; loopback is always added)",
    )
    cred.add_argument(
        "--site", action="append", default=[], help="site name; gets <site>.key/.pub (repeat)"
    )
    cred.add_argument("--days", type=int, default=365, help="certificate validity (365)")
    cred.add_argument("--force", action="store_true", help="overwrite existing files")
    cred.add_argument(
        "--sites-only",
        action="store_true",
        help="only add key pairs for the given --site names to an existing folder",
    )
    cred.add_argument(
        "--certify",
        action="append",
        default=[],
        metavar="SITE",
        help="issue <SITE>.crt for <SITE>.pub with the CA in --out (repeat)",
    )
    cred.set_defaults(func=_credentials)

    coord = sub.add_parser(
        "coordinator", help="start a SuperLink (TLS, node auth), register sites, run, stop"
    )
    coord.add_argument(
        "--credentials", default=None, help="folder with ca.crt, server.crt, server.key"
    )
    coord.add_argument(
        "--site-key",
        action="append",
        default=[],
        help="a site's public key to register (repeat; default: every *.pub in --credentials)",
    )
    coord.add_argument("--state-dir", default="superlink-state", help="database, logs")
    coord.add_argument("--host", default="0.0.0.0", help="listen address (0.0.0.0)")
    coord.add_argument("--port", type=int, default=8000, help="SuperLink port (8000)")
    coord.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a [tool.flwr.app.config] value (repeat)",
    )
    coord.add_argument(
        "--resume",
        default="",
        metavar="RUN_FOLDER",
        help="continue an interrupted run; its settings are read from RUN_FOLDER/run.json",
    )
    coord.add_argument("--project", default=None, help="Flower app folder (this project)")
    coord.add_argument(
        "--keep-running", action="store_true", help="leave the SuperLink running after the run"
    )
    coord.add_argument(
        "--insecure", action="store_true", help="no TLS, no node authentication (warns)"
    )
    coord.set_defaults(func=_coordinator)

    node = sub.add_parser("node", help="check the site's image folder, then join as a SuperNode")
    node.add_argument("--superlink", required=True, help="SuperLink host:port")
    node.add_argument("--data", required=True, help="the site's image folder")
    node.add_argument("--ca-cert", default=None, help="the federation's ca.crt")
    node.add_argument("--private-key", default=None, help="this site's <site>.key")
    node.add_argument(
        "--node-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="site setting, e.g. carbon-intensity=56.0 or lora-rank=4 (repeat)",
    )
    node.add_argument("--torch-threads", type=int, default=1, help="torch threads (1)")
    node.add_argument("--port", type=int, default=None, help="local ClientApp API port (free)")
    node.add_argument("--insecure", action="store_true", help="no TLS, no auth (warns)")
    node.add_argument(
        "--cold",
        action="store_true",
        help="no warm site worker: load the model and data per message (site-worker=false)",
    )
    node.set_defaults(func=_node)

    chk = sub.add_parser("check-data", help="validate a site's image folder (metadata.jsonl)")
    chk.add_argument("path", help="the image folder")
    chk.set_defaults(func=_check_data)
