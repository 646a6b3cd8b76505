"""The run folder: everything one federation leaves behind, under `runs/<id>/`.

`run.json` (settings, base model, start/end), the ledger, checkpoints and, at the end, the
final adapter as a PEFT `save_pretrained` folder that `PeftModel.from_pretrained` loads.
"""

import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel

from fedvlm.atomic import write_atomic
from fedvlm.config import RunSettings
from fedvlm.energy.codecarbon_adapter import describe_hardware
from fedvlm.errors import FedVLMError
from fedvlm.vlm import resolve_model_path

ADAPTER_DIR = "adapter"
RUN_JSON = "run.json"


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run, created once by the coordinator."""

    path: Path

    @classmethod
    def create(cls, run: RunSettings, run_config: dict[str, Any]) -> "RunFolder":
        """Make `runs/<id>/` and write `run.json`; the id is `run-name` or a timestamp."""
        run_id = run.run_name or time.strftime("%Y%m%d-%H%M%S")
        path = Path(run.run_dir).expanduser().resolve() / run_id
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "run_id": run_id,
            # Names each site's privacy account file; a resume keeps it (privacy.account_store).
            "federation_id": uuid.uuid4().hex,
            "base_model": run.base_model,
            "base_model_path": resolve_model_path(run.base_model),
            "strategy": run.strategy,
            "settings": asdict(run),
            "run_config": run_config,
            "hardware": describe_hardware(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_atomic(path / RUN_JSON, json.dumps(meta, indent=2, default=str).encode())
        return cls(path)

    @property
    def federation_id(self) -> str:
        """The id the sites file their privacy accounts under (the folder name if none)."""
        meta = json.loads((self.path / RUN_JSON).read_text())
        return str(meta.get("federation_id", self.path.name))

    def save_adapter(self, model: PeftModel) -> Path:
        """Save the global adapter as a PEFT folder and stamp the run's end in run.json."""
        target = self.path / ADAPTER_DIR
        model.save_pretrained(target)
        meta = json.loads((self.path / RUN_JSON).read_text())
        meta["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_atomic(self.path / RUN_JSON, json.dumps(meta, indent=2, default=str).encode())
        return target


def saved_run_config(folder: Path) -> dict[str, Any]:
    """The run config an interrupted run started with (its `run.json`), for ``--resume``.

    Why: a resumed run must keep its settings (coordinator/checkpoint.py refuses a change),
    so making the operator repeat every ``--run-config`` only invites a mismatch.
    """
    path = folder / RUN_JSON
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise FedVLMError(f"--resume: {path} does not exist; is {folder} a run folder?") from None
    except json.JSONDecodeError as exc:
        raise FedVLMError(f"--resume: {path} is not valid JSON ({exc})") from None
    return {k: v for k, v in meta.get("run_config", {}).items() if k != "resume"}
