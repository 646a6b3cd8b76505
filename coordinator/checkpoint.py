"""Crash-safe coordinator state: written after every round, read back by a resumed run.

One file, ``checkpoint.npz`` in the run folder, replaced atomically (temp file, fsync,
rename) after the round's ledger row is on disk. It holds everything the next round
depends on: the round number, the global adapter, the strategy's state (server-optimizer
moments included, `strategy.state_dict()`), the RNG states (Python's `random` drives
Flower's node sampling; numpy and torch drive the rest), the run config, and any extra
state another part registers (privacy accountant, energy totals).

Why the order ledger-then-checkpoint never counts a round twice: a crash between the two
leaves a ledger row for round k and a checkpoint of round k-1; the resumed run drops that
row (`truncate_ledger`) and repeats round k, so each round, its epsilon and its kWh appear
exactly once, and cumulative totals continue from round k-1's row. A crash before the
ledger write loses nothing that was recorded. Because the RNG states are restored exactly,
a deterministic run (fixed seeds, CPU) resumed after a kill ends with a bit-identical
adapter.
"""

import io
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from coordinator.ledger import truncate_ledger
from fedvlm.atomic import write_atomic
from fedvlm.errors import ConfigError

CHECKPOINT = "checkpoint.npz"
FORMAT_VERSION = 1

#: Run-config keys that may change when resuming (they do not alter what was computed).
RESUMABLE_CHANGES = frozenset(
    {"resume", "num-server-rounds", "round-timeout", "node-wait-timeout", "run-dir", "run-name"}
)

_META = "meta"
_ADAPTER = "adapter/"
_STRATEGY = "strategy/"
_EXTRA = "extra/"
_NUMPY_KEYS = "rng/numpy-keys"
_TORCH_RNG = "rng/torch"


class Stateful(Protocol):
    """What a checkpointed component offers (the strategies in `strategies/` do)."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class Checkpoint:
    """The coordinator's state after `server_round` completed rounds."""

    server_round: int
    adapter: dict[str, torch.Tensor]
    strategy_state: dict[str, Any]
    rng: dict[str, Any]
    run_config: dict[str, Any]
    extra: dict[str, Any]

    def restore(self, strategy: Stateful) -> None:
        """Load the strategy's state and every RNG, exactly as they were after the round."""
        strategy.load_state_dict(self.strategy_state)
        set_rng_state(self.rng)


def rng_state() -> dict[str, Any]:
    """The state of Python's, numpy's (legacy global) and torch's CPU generators."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys, int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def _split_state(state: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays go to the npz as arrays; Python scalars to the JSON metadata."""
    arrays, scalars = {}, {}
    for key, value in state.items():
        if isinstance(value, np.ndarray | torch.Tensor):
            arrays[key] = np.asarray(value)
        else:
            scalars[key] = value
    return arrays, scalars


def save_checkpoint(
    run_dir: Path,
    server_round: int,
    adapter: Mapping[str, torch.Tensor],
    strategy: Stateful,
    run_config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write the state after `server_round`; return the checkpoint path.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    server_round : int
        The last completed round (its ledger row must already be written).
    adapter : mapping of str to torch.Tensor
        The global adapter after this round.
    strategy : Stateful
        Its `state_dict()` is saved (numpy arrays and Python scalars).
    run_config : mapping
        The run config this run was started with.
    extra : mapping, optional
        More state (arrays or JSON scalars) by name, returned as `Checkpoint.extra`.
    """
    strategy_arrays, strategy_scalars = _split_state(strategy.state_dict())
    extra_arrays, extra_scalars = _split_state(extra or {})
    rng = rng_state()
    meta = {
        "format": FORMAT_VERSION,
        "round": server_round,
        "adapter_order": list(adapter),
        "strategy_scalars": strategy_scalars,
        "extra_scalars": extra_scalars,
        "rng_python": rng["python"],
        "rng_numpy": [v for i, v in enumerate(rng["numpy"]) if i != 1],
        "run_config": dict(run_config),
    }
    arrays: dict[str, np.ndarray] = {
        _META: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        _NUMPY_KEYS: np.asarray(rng["numpy"][1], dtype=np.uint32),
        _TORCH_RNG: rng["torch"].numpy(),
    }
    arrays.update({_ADAPTER + k: v.detach().cpu().numpy() for k, v in adapter.items()})
    arrays.update({_STRATEGY + k: v for k, v in strategy_arrays.items()})
    arrays.update({_EXTRA + k: v for k, v in extra_arrays.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = run_dir / CHECKPOINT
    write_atomic(path, buffer.getvalue())
    return path


def _with_prefix(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read the checkpoint of a run folder.

    Raises
    ------
    ConfigError
        Naming the ``resume`` key, if the folder has no (readable) checkpoint.
    """
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise ConfigError(
            "resume",
            f"{run_dir} has no {CHECKPOINT}: the run stopped before its first round completed; "
            "start it again without resume",
        )
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays[_META].tobytes().decode())
    if meta.get("format") != FORMAT_VERSION:
        raise ConfigError("resume", f"{path}: unknown checkpoint format {meta.get('format')}")
    kind, pos, has_gauss, cached = meta["rng_numpy"]
    adapter_arrays = _with_prefix(arrays, _ADAPTER)
    return Checkpoint(
        server_round=int(meta["round"]),
        adapter={k: torch.from_numpy(adapter_arrays[k].copy()) for k in meta["adapter_order"]},
        strategy_state={**meta["strategy_scalars"], **_with_prefix(arrays, _STRATEGY)},
        rng={
            "python": meta["rng_python"],
            "numpy": [kind, arrays[_NUMPY_KEYS], pos, has_gauss, cached],
            "torch": torch.from_numpy(arrays[_TORCH_RNG].copy()),
        },
        run_config=meta["run_config"],
        extra={**meta["extra_scalars"], **_with_prefix(arrays, _EXTRA)},
    )


def resume_folder(run_config: Mapping[str, Any]) -> Path | None:
    """The run folder named by the ``resume`` key (a path, or a name under ``run-dir``)."""
    value = run_config.get("resume", "")
    if not isinstance(value, str):
        raise ConfigError("resume", f"expected a run folder path or name, got {value!r}")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        path = Path(str(run_config.get("run-dir", "runs"))).expanduser() / value
    if not path.is_dir():
        raise ConfigError("resume", f"run folder {value!r} does not exist")
    return path.resolve()


def check_same_run(saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse to resume with settings that would change what earlier rounds computed.

    Raises
    ------
    ConfigError
        Naming the first differing key, with both values.
    """
    for key in sorted(set(saved) | set(now)):
        if key in RESUMABLE_CHANGES:
            continue
        if saved.get(key) != now.get(key):
            raise ConfigError(
                key,
                f"was {saved.get(key)!r} in the interrupted run, now {now.get(key)!r}; a "
                "resumed run must keep its settings (only "
                f"{', '.join(sorted(RESUMABLE_CHANGES))} may change)",
            )


def open_resumed(run_config: Mapping[str, Any]) -> tuple[Path, Checkpoint] | None:
    """For a ``resume`` run: its folder and checkpoint, after checking the settings match.

    Returns None for a fresh run. Ledger rows after the checkpointed round (written just
    before a crash, for the round about to be repeated) are dropped, so nothing that reads
    the ledger counts that round twice.
    """
    folder = resume_folder(run_config)
    if folder is None:
        return None
    checkpoint = load_checkpoint(folder)
    check_same_run(checkpoint.run_config, run_config)
    rounds = [row["round"] for row in truncate_ledger(folder, checkpoint.server_round)]
    if checkpoint.server_round not in rounds:
        raise ConfigError(
            "resume",
            f"{folder}: checkpoint of round {checkpoint.server_round} but no ledger row for it",
        )
    return folder, checkpoint
