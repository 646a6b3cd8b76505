"""The `fedvlm` command: the three user jobs and the tools around them.

This module is a dispatcher: each subcommand imports the package that does the work only
when it runs (simulations, coordinator), so that importing `fedvlm` as a library still
pulls in no other package of the project (DESIGN.md's import rule holds for library code).
"""

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from fedvlm.deploy_cli import add_deploy_commands, parse_pairs
from fedvlm.errors import FedVLMError
from fedvlm.explain_cli import add_explain_command


def _simulate(args: argparse.Namespace) -> int:
    scenario_mod = importlib.import_module("simulations.scenario")
    runner = importlib.import_module("simulations.runner")
    real_data = importlib.import_module("simulations.real_data")
    scenario = scenario_mod.Scenario.load(args.scenario)
    overrides = parse_pairs(args.run_config, "--run-config")
    flags = {
        key: getattr(args, key.replace("-", "_"))
        for key in real_data.DATA_KEYS
        if getattr(args, key.replace("-", "_")) is not None
    }
    # Flags replace the scenario's [data] table; its other settings stay (e.g. rounds).
    data = flags if ("sites" in flags or "dataset" in flags) else {**scenario.data, **flags}
    scenario, overrides = real_data.with_data(scenario, data, overrides)
    run_dir = runner.run_scenario(scenario, overrides, Path(args.run_dir) if args.run_dir else None)
    if args.baselines:  # what each site reaches alone, beside what federation gave it
        importlib.import_module("simulations.baselines").write_baselines(run_dir)
    print(f"fedvlm: run folder {run_dir}")
    return 0


def _report(args: argparse.Namespace) -> int:
    report = importlib.import_module("coordinator.report")
    report.build_report(Path(args.run_dir))
    print(f"fedvlm: report rebuilt in {args.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="fedvlm", description=__doc__.splitlines()[0])
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
