"""SecAgg+ secure aggregation (Bell et al. 2020) with the consistency check of Bonawitz et al.

The coordinator learns only ``sum_i w_i * update_i`` and ``sum_i w_i`` over the clients that
survived, even when clients drop out at any stage, and honest clients refuse a coordinator that
lies about who dropped. The protocol is transport-free: ``SecAggServer`` and ``SecAggClient``
exchange plain dict payloads, which ``privacy.secagg.flower`` maps onto Flower RecordDicts.
"""

from .client import SecAggClient
from .config import SecAggConfig
from .errors import (
    AuthenticationError,
    CoordinatorMisbehaviourError,
    MalformedPayloadError,
    RoundFailedError,
    SecAggError,
)
from .memory import InMemoryRun, run_protocol_in_memory
from .messages import Payload, Stage
from .server import SecAggResult, SecAggServer

__all__ = [
    "AuthenticationError",
    "CoordinatorMisbehaviourError",
    "InMemoryRun",
    "MalformedPayloadError",
    "Payload",
    "RoundFailedError",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggResult",
    "SecAggServer",
    "Stage",
    "run_protocol_in_memory",
]
