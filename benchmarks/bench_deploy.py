"""Deployed rounds on loopback: wall time per round against the work done in it.

Three runs of the same deployed federation, one after the other in this process's lifetime:

- ``warm``: `fedvlm coordinator` and N × `fedvlm node` (each with its site worker), exactly
  as a user starts them (``--insecure`` on loopback), the embedded model;
- ``cold``: the same with ``fedvlm node --cold`` (a fresh ClientApp process per message
  loads the model and decodes the images each time);
- ``floor``: the same SuperLink, nodes and polling, with a Flower app whose ClientApp does
  no work (``benchmarks/floor_app``): what a round costs in Flower's messaging alone.

Per round it prints the wall time (the ledger's ``seconds``) and ``wall / work``, where
work = the slowest site's metered train + evaluate seconds + the coordinator's metered
seconds (ledger ``energy.nodes.*.seconds``, ``energy.coordinator.seconds``), and
``wall / (floor + work)`` with the floor's median round. The summary is the median of
rounds 2..N (round 1 of the warm path loads the model into each worker).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_deploy.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import output_to  # noqa: E402

from coordinator.launch import CoordinatorOptions, running_superlink, submit_run  # noqa: E402
from coordinator.ledger import read_ledger  # noqa: E402
from fedvlm.config import RunSettings  # noqa: E402
from fedvlm.data.imagefolder import write_imagefolder  # noqa: E402
from fedvlm.data.partition import synthetic_site  # noqa: E402
from fedvlm.processes import child_env, free_port, start_process, stop_process_group  # noqa: E402
from fedvlm.vlm import initial_adapter  # noqa: E402

FLOOR_APP = ROOT / "benchmarks" / "floor_app"
FEDVLM = str(Path(sys.executable).parent / "fedvlm")
TARGET = 1.5  # wall / work (issue 14)
FLOOR_TARGET = 1.2  # wall / (floor + work), where the floor alone makes TARGET impossible


@dataclass
class Round:
    """One round of one run: its wall seconds and the work metered in it."""

    round: int
    wall: float
    work: float  # slowest site's train + evaluate + coordinator (0 for the floor)


def site_folders(root: Path, sites: int, n_train: int, n_val: int) -> list[Path]:
    """Each site's image folder on disk, non-IID synthetic sites as in the tests."""
    folders = []
    for index in range(sites):
        data = synthetic_site(
            index,
            sites,
            n_train=n_train,
            n_val=n_val,
            label_alpha=0.5,
            acquisition_skew=0.5,
            seed=0,
        )
        split = {"train": data.train, "validation": data.val}
        folders.append(write_imagefolder(split, root / f"site-{index}"))
    return folders


def start_nodes(port: int, folders: list[Path], log: Path, *, cold: bool) -> list:
    """`fedvlm node --insecure` per site folder (they retry until the SuperLink is up)."""
    nodes = []
    with open(log, "ab") as sink:
        for folder in folders:
            command = [FEDVLM, "node", "--insecure", "--superlink", f"127.0.0.1:{port}"]
            command += ["--data", str(folder), *(["--cold"] if cold else [])]
            nodes.append(start_process(command, child_env(), sink))
    return nodes


def work_rounds(run: Path) -> list[Round]:
    """Wall and metered work of each training round in a run folder's ledger."""
    rounds = []
    for row in read_ledger(run):
        if row["round"] == 0:
            continue
        energy = row["energy"]
        slowest = max(entry["seconds"] for entry in energy["nodes"].values())
        rounds.append(
            Round(row["round"], row["seconds"], slowest + energy["coordinator"]["seconds"])
        )
    return rounds


def fedvlm_run(
    tmp: Path, folders: list[Path], config: dict, *, cold: bool, log: Path
) -> list[Round]:
    """One deployed fedvlm run (`fedvlm coordinator` + a node per folder); its rounds."""
    name = "cold" if cold else "warm"
    port = free_port()
    command = [FEDVLM, "coordinator", "--insecure", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--state-dir", str(tmp / name / "state")]
    for key, value in {**config, "run-dir": str(tmp / name), "run-name": "run"}.items():
        command += ["--run-config", f"{key}={json.dumps(value)}"]
    with open(log, "ab") as sink:
        coordinator = start_process(command, child_env(), sink)
    nodes = start_nodes(port, folders, log, cold=cold)
    try:
        code = coordinator.wait(timeout=3600)
    finally:
        for process in [coordinator, *nodes]:
            stop_process_group(process, grace=5)
    if code != 0:
        raise RuntimeError(f"the {name} run failed ({code}); see {log}")
    return work_rounds(tmp / name / "run")


def floor_run(tmp: Path, folders: list[Path], config: dict, log: Path) -> list[Round]:
    """The same federation with `benchmarks/floor_app`: rounds of messages, no work."""
    out = tmp / "floor.jsonl"
    adapter = initial_adapter("embedded", RunSettings.from_config(config).lora)
    options = CoordinatorOptions(
        credentials=None,
        site_keys=[],
        state_dir=tmp / "floor" / "state",
        host="127.0.0.1",
        port=free_port(),
        run_config={
            "num-server-rounds": config["num-server-rounds"],
            "min-available-nodes": config["min-available-nodes"],
            "payload": ",".join(str(t.numel()) for t in adapter.values()),
            "out": str(out),
        },
        insecure=True,
        project=FLOOR_APP,
    )
    nodes = start_nodes(options.port, folders, log, cold=True)  # the floor app has no worker
    try:
        with output_to(log), running_superlink(options) as env:
            code = submit_run(options, env)
    finally:
        for process in nodes:
            stop_process_group(process, grace=5)
    if code != 0 or not out.is_file():
        raise RuntimeError(f"the floor run failed ({code}); see {log}")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return [Round(r["round"], r["seconds"], 0.0) for r in rows]


def steady(values: list[float]) -> float:
    """Median of rounds 2.. (round 1 loads each warm worker's model); all if only one."""
    return statistics.median(values[1:] or values)


def summary(runs: dict[str, list[Round]]) -> dict:
    """The figures: per run and round, and the steady medians of the ratios."""
    floor = steady([r.wall for r in runs["floor"]]) if "floor" in runs else None
    out: dict = {"floor_seconds": floor, "target": TARGET, "floor_target": FLOOR_TARGET}
    for name in ("warm", "cold"):
        if name not in runs:
            continue
        rounds = runs[name]
        out[name] = {
            "rounds": [asdict(r) for r in rounds],
            "wall_seconds": steady([r.wall for r in rounds]),
            "work_seconds": steady([r.work for r in rounds]),
            "wall_over_work": steady([r.wall / r.work for r in rounds]),
        }
        if floor is not None:
            out[name]["wall_over_floor_work"] = steady([r.wall / (floor + r.work) for r in rounds])
    if "floor" in runs:
        out["floor"] = {"rounds": [asdict(r) for r in runs["floor"]]}
    return out


def print_table(figures: dict) -> None:
    """Per round: wall, work, the two ratios; then the steady medians and the targets."""
    floor = figures["floor_seconds"]
    if floor is not None:
        walls = ", ".join(f"{r['wall']:.2f}" for r in figures["floor"]["rounds"])
        print(f"floor (no-op ClientApp): rounds {walls} s; median of rounds 2.. {floor:.2f} s")
    for name in ("cold", "warm"):
        if name not in figures:
            continue
        run = figures[name]
        print(f"\n{name}: round | wall s | work s | wall/work | wall/(floor+work)")
        for r in run["rounds"]:
            vs_floor = "-" if floor is None else f"{r['wall'] / (floor + r['work']):.2f}"
            print(
                f"  {r['round']:5d} | {r['wall']:6.2f} | {r['work']:6.2f} | "
                f"{r['wall'] / r['work']:9.2f} | {vs_floor}"
            )
        line = f"  median of rounds 2..: wall/work {run['wall_over_work']:.2f} (target <= {TARGET})"
        if "wall_over_floor_work" in run:
            line += (
                f", wall/(floor+work) {run['wall_over_floor_work']:.2f} (target <= {FLOOR_TARGET})"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=16)
    parser.add_argument("--examples", type=int, default=32, help="training examples per site")
    parser.add_argument(
        "--runs", default="floor,warm,cold", help="which runs, in this order (floor,warm,cold)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--log", type=Path, help="the processes' output (default: a temp file)")
    args = parser.parse_args()
    log = args.log or Path(tempfile.mkstemp(prefix="bench_deploy-", suffix=".log")[1])
    config = {
        "num-server-rounds": args.rounds,
        "local-steps": args.local_steps,
        "min-train-nodes": args.sites,
        "min-available-nodes": args.sites,
        "seed": 0,
    }
    runs: dict[str, list[Round]] = {}
    with tempfile.TemporaryDirectory(prefix="fedvlm-bench-deploy-") as name:
        tmp = Path(name)
        folders = site_folders(tmp, args.sites, args.examples, max(args.examples // 2, 4))
        for run in args.runs.split(","):
            began = time.perf_counter()
            print(f"bench_deploy: {run} run ... (log: {log})", file=sys.stderr, flush=True)
            if run == "floor":
                runs[run] = floor_run(tmp, folders, config, log)
            else:
                runs[run] = fedvlm_run(tmp, folders, config, cold=run == "cold", log=log)
            print(
                f"bench_deploy: {run} done in {time.perf_counter() - began:.0f} s", file=sys.stderr
            )
    figures = summary(runs)
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
