"""The adapter: the only weights that travel, as an ordered name -> tensor mapping.

Names are PEFT's state-dict keys (``get_peft_model_state_dict``), so a saved adapter loads with
``PeftModel.from_pretrained``. Base weights are never part of it.
"""

from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord
from peft import PeftModel, get_peft_model_state_dict

from fedvlm.errors import FedVLMError

Adapter = dict[str, torch.Tensor]


def adapter_parameters(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    """Map each adapter key to the live parameter it is stored in.

    PEFT renames parameters in its state dict (drops the adapter name, unwraps
    ``modules_to_save``); matching storage instead of names stays correct whatever the rules.
    """
    by_storage = {p.data_ptr(): p for p in model.parameters()}
    return {
        key: by_storage[tensor.data_ptr()]
        for key, tensor in get_peft_model_state_dict(model).items()
    }


def get_adapter_state(model: PeftModel) -> Adapter:
    """Detached CPU copies of the adapter tensors, in PEFT's order."""
    return {
        key: tensor.detach().to("cpu", copy=True)
        for key, tensor in get_peft_model_state_dict(model).items()
    }


def set_adapter_state(model: PeftModel, adapter: Mapping[str, torch.Tensor]) -> None:
    """Overwrite the whole adapter of ``model``; refuse anything that does not fit exactly.

    Raises
    ------
    FedVLMError
        If keys are missing or unexpected, or a shape differs; nothing is written then.
    """
    live = adapter_parameters(model)
    missing = [k for k in live if k not in adapter]
    unexpected = [k for k in adapter if k not in live]
    if missing or unexpected:
        raise FedVLMError(
            f"adapter does not match the model: missing {missing[:3]} ({len(missing)}), "
            f"unexpected {unexpected[:3]} ({len(unexpected)})"
        )
    for key, param in live.items():
        if tuple(adapter[key].shape) != tuple(param.shape):
            raise FedVLMError(
                f"adapter tensor '{key}' has shape {tuple(adapter[key].shape)}, "
                f"the model expects {tuple(param.shape)}"
            )
    with torch.no_grad():
        for key, param in live.items():
            param.copy_(adapter[key])


def adapter_to_arrayrecord(adapter: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Pack the adapter for a Flower Message (order kept)."""
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in adapter.items()})


def arrayrecord_to_adapter(record: ArrayRecord) -> Adapter:
    """Unpack an adapter from a Flower Message; exact inverse of ``adapter_to_arrayrecord``."""
    return dict(record.to_torch_state_dict())


def adapter_nbytes(adapter: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the raw tensors, i.e. what one upload or download costs before framing."""
    return sum(t.numel() * t.element_size() for t in adapter.values())


def subtract(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> Adapter:
    """``a - b`` key by key (an update is local minus global)."""
    _same_keys(a, b)
    return {k: a[k] - b[k] for k in a}


def add(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], scale: float = 1.0
) -> Adapter:
    """``a + scale * b`` key by key (apply an update to a global adapter)."""
    _same_keys(a, b)
    return {k: a[k] + scale * b[k] for k in a}


def _same_keys(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    if set(a) != set(b):
        raise FedVLMError(f"adapters have different keys: {sorted(set(a) ^ set(b))[:3]}")
