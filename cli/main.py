"""The `fedvlm` command: the three user jobs and the tools around them.

The command line is the top layer of the project (see `[tool.importlinter]` in
pyproject.toml): it imports what each subcommand dispatches to (simulations, coordinator,
client, the core) and nothing imports it, so the core `fedvlm` stays free of upward arrows.

Each handler imports the work it dispatches to with a plain import inside the handler
(import-linter sees those as well), so one subcommand never pays for another's dependencies:
`fedvlm --help` or `fedvlm credentials` would otherwise load torch, transformers, peft and
matplotlib first (0.3 s against about 10 s on a loaded 2-core machine).
"""

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

from cli.deploy import add_deploy_commands, parse_pairs
from cli.explain import add_explain_command
from cli.settings import add_settings_command
from fedvlm.errors import FedVLMError


def _simulate(args: argparse.Namespace) -> int:
    from simulations.baselines import is_private, write_baselines
    from simulations.real_data import DATA_KEYS, with_data
    from simulations.runner import run_scenario
    from simulations.scenario import Scenario

    scenario = Scenario.load(args.scenario)
    overrides = parse_pairs(args.run_config, "--run-config")
    flags = {
        key: getattr(args, key.replace("-", "_"))
        for key in DATA_KEYS
        if getattr(args, key.replace("-", "_")) is not None
    }
    # Flags replace the scenario's [data] table; its other settings stay (e.g. rounds).
    data = flags if ("sites" in flags or "dataset" in flags) else {**scenario.data, **flags}
    scenario, overrides = with_data(scenario, data, overrides)
    run_dir = run_scenario(scenario, overrides, Path(args.run_dir) if args.run_dir else None)
    if args.baselines and is_private(run_dir):  # they would train on the sites' data without DP
        print("fedvlm: no baselines for a DP run: they train without differential privacy")
    elif args.baselines:  # what each site reaches alone, beside what federation gave it
        write_baselines(run_dir)
    print(f"fedvlm: run folder {run_dir}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from coordinator.report import build_report

    build_report(Path(args.run_dir))
    print(f"fedvlm: report rebuilt in {args.run_dir}")
    return 0


# One worked example per subcommand, shown at the end of its --help.
EXAMPLES = {
    "simulate": "fedvlm simulate --scenario default --run-config num-server-rounds=3\n"
    "fedvlm simulate --sites ./sites --run-config 'heldout-path=\"./heldout\"'",
    "report": "fedvlm report runs/default-20261129-120000",
    "credentials": "fedvlm credentials --out credentials --host fl.example.org "
    "--site hospital-a --site hospital-b",
    "coordinator": "fedvlm coordinator --credentials credentials --state-dir superlink-state "
    "--run-config num-server-rounds=10\n"
    "fedvlm coordinator --credentials credentials --resume runs/deploy-20261130-101500",
    "node": "fedvlm node --superlink fl.example.org:8000 --data /data/site-images "
    "--ca-cert ca.crt --private-key hospital-a.key",
    "check-data": "fedvlm check-data /data/site-images",
    "settings": "fedvlm settings > docs/settings.md",
    "explain": "fedvlm explain --data /data/site-images "
    "--adapter runs/default-20261129-120000/adapter --out explanations",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="fedvlm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fedvlm {version('fedvlm')}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate a federation on this machine (Flower engine)")
    sim.add_argument("--scenario", default="default", help="name in simulations/scenarios or path")
    sim.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a [tool.flwr.app.config] value, e.g. --run-config num-server-rounds=3",
    )
    sim.add_argument("--run-dir", default=None, help="parent folder of run folders (./runs)")
    data = sim.add_argument_group("real data (instead of the synthetic task)")
    data.add_argument("--sites", metavar="DIR", help="one imagefolder per site: DIR/<site>/")
    data.add_argument("--dataset", metavar="PATH", help="imagefolder or save_to_disk dataset")
    data.add_argument(
        "--partitioner",
        choices=["iid", "dirichlet", "pathological", "natural-id"],
        help="Flower Datasets partitioner that splits --dataset into sites (default iid)",
    )
    data.add_argument("--partition-by", metavar="COLUMN", help="column to split by (answer)")
    data.add_argument("--num-sites", type=int, help="sites to make (not for natural-id)")
    data.add_argument("--alpha", type=float, help="Dirichlet concentration (sim-label-alpha)")
    data.add_argument("--classes-per-site", type=int, help="pathological: values per site")
    sim.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the per-site local-only and personalised baselines after the run",
    )
    sim.set_defaults(func=_simulate)

    rep = sub.add_parser("report", help="rebuild plots and model card of a run from its ledger")
    rep.add_argument("run_dir", help="a run folder, e.g. runs/default-20261129-120000")
    rep.set_defaults(func=_report)

    add_deploy_commands(sub)
    add_explain_command(sub)
    add_settings_command(sub)
    for name, command in sub.choices.items():
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.epilog = "example:\n  " + EXAMPLES[name].replace("\n", "\n  ")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fedvlm` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FedVLMError as exc:
        print(f"fedvlm: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"fedvlm: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
