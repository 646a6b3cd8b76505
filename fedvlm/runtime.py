"""Where and how a site runs its VLM: device, precision, memory savers, memory report.

The same code runs on a laptop CPU and on a GPU node: ``device = "auto"`` picks CUDA when there
is one, ``dtype = "auto"`` picks bfloat16 where the GPU supports it (float16 otherwise, float32 on
CPU). Gradient checkpointing and a 4-bit base (QLoRA, needs ``bitsandbytes`` and CUDA) trade
compute for memory on small GPUs; the adapter that travels stays float32 either way.
"""

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedvlm.errors import ConfigError
from fedvlm.settings_registry import Scope, setting

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# A site knows its own hardware: its node keys win over the run's (see ModelSettings).
DEVICE = setting(
    "device",
    str,
    "auto",
    "Where the model runs: auto (CUDA if visible), cpu, cuda or cuda:N.",
    scope=Scope.BOTH,
)
DTYPE = setting(
    "dtype", str, "auto", "Model dtype: auto, float32, bfloat16 or float16.", scope=Scope.BOTH
)
GRADIENT_CHECKPOINTING = setting(
    "gradient-checkpointing",
    bool,
    False,
    "Recompute activations in the backward pass.",
    scope=Scope.BOTH,
)
LOAD_IN_4BIT = setting(
    "load-in-4bit",
    bool,
    False,
    "Quantise the frozen base to 4-bit NF4 (CUDA, bitsandbytes).",
    scope=Scope.BOTH,
)


@dataclass(frozen=True)
class ModelSettings:
    """How a node loads its base model (node keys; run keys of the same name are defaults).

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
        (``device``).
    dtype : str
        ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"`` (``dtype``).
    gradient_checkpointing : bool
        Recompute activations in the backward pass (``gradient-checkpointing``).
    load_in_4bit : bool
        Quantise the frozen base to 4-bit NF4 (``load-in-4bit``); needs bitsandbytes and CUDA.
    """

    device: str = DEVICE.default
    dtype: str = DTYPE.default
    gradient_checkpointing: bool = GRADIENT_CHECKPOINTING.default
    load_in_4bit: bool = LOAD_IN_4BIT.default

    def __post_init__(self) -> None:
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError("device", f"expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(
                "dtype", f"expected auto or one of {sorted(DTYPES)}, got {self.dtype!r}"
            )

    @classmethod
    def from_config(
        cls, node_config: Mapping[str, Any], run_config: Mapping[str, Any] | None = None
    ) -> "ModelSettings":
        """A node's settings: its ``node_config`` keys, else the run's, else the defaults.

        A site knows its own hardware, so its node keys win; the run keys let a simulation
        (where every node shares one machine) set them all at once.
        """
        merged = {**(run_config or {}), **node_config}
        return cls(
            device=DEVICE.read(merged),
            dtype=DTYPE.read(merged),
            gradient_checkpointing=GRADIENT_CHECKPOINTING.read(merged),
            load_in_4bit=LOAD_IN_4BIT.read(merged),
        )

    def torch_device(self) -> torch.device:
        """The device to load onto; refuses CUDA where there is none."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device", f"{self.device!r} asked for, but no CUDA device is visible")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        """Compute dtype: bfloat16 where the GPU has it, float16 on older GPUs, float32 on CPU."""
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        if self.torch_device().type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def quantization_config(self):
        """A bitsandbytes 4-bit config, or ``None``; refuses clearly where QLoRA cannot run."""
        if not self.load_in_4bit:
            return None
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("load-in-4bit", "needs bitsandbytes: pip install 'fedvlm[qlora]'")
        if self.torch_device().type != "cuda":
            raise ConfigError("load-in-4bit", 'needs a CUDA device (set device = "cuda")')
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=self.torch_dtype(),
        )


def reset_peak_memory() -> None:
    """Start a new peak-memory window (call at the start of a round's work)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_mb() -> float:
    """Peak GPU memory allocated by this process since the last reset, in MiB; 0.0 on CPU."""
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.max_memory_allocated() / 2**20
