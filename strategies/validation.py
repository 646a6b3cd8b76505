"""Checks every train reply passes before it may touch the global adapter.

A federation trusts its sites to run the agreed code, not to be free of bugs, crashes
or tampering: one NaN or one mis-shaped tensor averaged into the global adapter ruins
every site's model at once. So each reply is checked on its own, and a reply that fails
contributes nothing; the reason is returned, never swallowed, so the coordinator can
write it to the round's ledger.

The expected names, shapes and dtypes come from the global adapter the strategy sent
this round (an update has the same layout as the adapter it updates).
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from fedvlm import contract
from fedvlm.lora_factors import factor_of, partner, rank_axis

# Names of the checks, as written to the ledger.
CHECK_RECORDS = "records"
CHECK_EXAMPLES = "num-examples"
CHECK_KEYS = "keys"
CHECK_SHAPE = "shape"
CHECK_DTYPE = "dtype"
CHECK_FINITE = "finite"
CHECK_NORM = "norm"


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype one tensor of an update must have.

    Attributes
    ----------
    shape : tuple[int, ...]
        Expected shape; on ``rank_axis`` it is the largest size allowed.
    dtype : str
        Expected numpy dtype name.
    rank_axis : int or None
        For heterogeneous LoRA ranks: the axis holding the rank, whose size may be any
        value from 1 to ``shape[rank_axis]`` (a site with a smaller rank). None: the
        shape must match exactly.
    """

    shape: tuple[int, ...]
    dtype: str
    rank_axis: int | None = None

    def admits(self, shape: tuple[int, ...]) -> bool:
        """Whether an update tensor of ``shape`` fits this spec."""
        if self.rank_axis is None or len(shape) != len(self.shape):
            return shape == self.shape
        axis = self.rank_axis
        others_match = all(
            got == want
            for i, (got, want) in enumerate(zip(shape, self.shape, strict=True))
            if i != axis
        )
        return others_match and 1 <= shape[axis] <= self.shape[axis]


@dataclass(frozen=True)
class Rejection:
    """A reply left out of aggregation, and why (one ledger row).

    Attributes
    ----------
    node_id : int
        The node that sent the reply.
    check : str
        The check that failed (one of the ``CHECK_*`` names of this module).
    reason : str
        What was wrong, naming the tensor or key at fault.
    """

    node_id: int
    check: str
    reason: str


@dataclass(frozen=True)
class AcceptedUpdate:
    """A reply that passed every check, decoded for aggregation."""

    node_id: int
    update: dict[str, np.ndarray]
    num_examples: int
    metrics: MetricRecord


class InvalidUpdateError(Exception):
    """Raised by a check; carries the check's name and the reason."""

    def __init__(self, check: str, reason: str) -> None:
        self.check = check
        self.reason = reason
        super().__init__(f"{check}: {reason}")


def spec_of(arrays: Mapping[str, np.ndarray]) -> dict[str, TensorSpec]:
    """Return the layout an update of ``arrays`` must have (same names, shapes, dtypes)."""
    return {name: TensorSpec(tuple(a.shape), str(a.dtype)) for name, a in arrays.items()}


def variable_rank_spec(arrays: Mapping[str, np.ndarray]) -> dict[str, TensorSpec]:
    """Layout for heterogeneous ranks: LoRA factors may have any rank up to the global's."""
    return {
        name: TensorSpec(tuple(a.shape), str(a.dtype), rank_axis(name))
        for name, a in arrays.items()
    }


def check_update(
    update: Mapping[str, np.ndarray],
    spec: Mapping[str, TensorSpec],
    max_norm: float | None = None,
) -> None:
    """Check one update (or an unmasked sum of updates) against the expected layout.

    Parameters
    ----------
    update : Mapping[str, np.ndarray]
        Tensor name to update tensor.
    spec : Mapping[str, TensorSpec]
        Expected names, shapes and dtypes (see `spec_of`).
    max_norm : float or None
        Largest allowed L2 norm of the whole update (all tensors together); None means
        no bound. A bound limits how far a single site can move the global adapter.

    Raises
    ------
    InvalidUpdateError
        On the first failed check, naming the tensor at fault.
    """
    missing = sorted(set(spec) - set(update))
    extra = sorted(set(update) - set(spec))
    if missing or extra:
        raise InvalidUpdateError(
            CHECK_KEYS, f"missing tensors {missing}, unexpected tensors {extra}"
        )
    squared_norm = 0.0
    for name, expected in spec.items():
        tensor = update[name]
        if not expected.admits(tuple(tensor.shape)):
            bound = (
                "" if expected.rank_axis is None else f" (rank axis {expected.rank_axis} at most)"
            )
            raise InvalidUpdateError(
                CHECK_SHAPE,
                f"tensor '{name}' has shape {tensor.shape}, expected {expected.shape}{bound}",
            )
        if str(tensor.dtype) != expected.dtype:
            raise InvalidUpdateError(
                CHECK_DTYPE, f"tensor '{name}' has dtype {tensor.dtype}, expected {expected.dtype}"
            )
        if not np.all(np.isfinite(tensor)):
            raise InvalidUpdateError(CHECK_FINITE, f"tensor '{name}' holds NaN or infinite values")
        squared_norm += float(np.sum(np.square(tensor, dtype=np.float64)))
    _check_rank_pairs(update, spec)
    norm = math.sqrt(squared_norm)
    if max_norm is not None and norm > max_norm:
        raise InvalidUpdateError(
            CHECK_NORM, f"update L2 norm {norm:.6g} exceeds the bound {max_norm:g}"
        )


def _check_rank_pairs(update: Mapping[str, np.ndarray], spec: Mapping[str, TensorSpec]) -> None:
    """With variable ranks, each LoRA A must have the same rank as its B."""
    for name_a, expected in spec.items():
        if expected.rank_axis is None or factor_of(name_a) != "A":
            continue
        name_b = partner(name_a)
        if name_b in spec and spec[name_b].rank_axis is not None:
            rank_a = update[name_a].shape[expected.rank_axis]
            rank_b = update[name_b].shape[spec[name_b].rank_axis]
            if rank_a != rank_b:
                raise InvalidUpdateError(
                    CHECK_SHAPE, f"'{name_a}' has rank {rank_a} but '{name_b}' has rank {rank_b}"
                )


def _num_examples(metrics: MetricRecord) -> int:
    """Return the reply's example count, which must be a positive integer."""
    if contract.NUM_EXAMPLES not in metrics:
        raise InvalidUpdateError(CHECK_EXAMPLES, f"metric '{contract.NUM_EXAMPLES}' is missing")
    value = metrics[contract.NUM_EXAMPLES]
    if isinstance(value, list) or not (
        isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    ):
        raise InvalidUpdateError(
            CHECK_EXAMPLES, f"metric '{contract.NUM_EXAMPLES}' is {value!r}, not an integer"
        )
    if value <= 0:
        raise InvalidUpdateError(
            CHECK_EXAMPLES, f"metric '{contract.NUM_EXAMPLES}' is {value!r}, must be positive"
        )
    return int(value)


def _decode(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """Deserialize an ArrayRecord; undecodable bytes are a rejection, not a crash."""
    try:
        return {name: array.numpy() for name, array in arrays.items()}
    except Exception as err:  # any decoding failure is the sender's fault
        raise InvalidUpdateError(CHECK_RECORDS, f"array record cannot be decoded: {err}") from err


def check_reply(
    reply: Message, spec: Mapping[str, TensorSpec], max_norm: float | None = None
) -> AcceptedUpdate:
    """Check one train reply and decode it.

    Parameters
    ----------
    reply : Message
        A train reply: exactly one ArrayRecord under ``contract.ARRAYS`` (the update)
        and one MetricRecord under ``contract.METRICS`` holding ``contract.NUM_EXAMPLES``.
    spec : Mapping[str, TensorSpec]
        Expected layout of the update.
    max_norm : float or None
        Bound on the update's L2 norm (None: no bound).

    Returns
    -------
    AcceptedUpdate
        The decoded update with its example count.

    Raises
    ------
    InvalidUpdateError
        On the first failed check.
    """
    content = reply.content
    if list(content.array_records) != [contract.ARRAYS] or list(content.metric_records) != [
        contract.METRICS
    ]:
        raise InvalidUpdateError(
            CHECK_RECORDS,
            f"expected exactly ArrayRecord '{contract.ARRAYS}' and MetricRecord "
            f"'{contract.METRICS}', got {list(content.array_records)} and "
            f"{list(content.metric_records)}",
        )
    metrics = content.metric_records[contract.METRICS]
    num_examples = _num_examples(metrics)
    update = _decode(content.array_records[contract.ARRAYS])
    check_update(update, spec, max_norm)
    return AcceptedUpdate(reply.metadata.src_node_id, update, num_examples, metrics)


def validate_replies(
    replies: Iterable[Message], spec: Mapping[str, TensorSpec], max_norm: float | None = None
) -> tuple[list[AcceptedUpdate], list[Rejection]]:
    """Split replies into accepted updates and rejections (with reasons).

    Parameters
    ----------
    replies : Iterable[Message]
        The round's train replies. Error replies (a node that crashed or timed out) are
        left out without a rejection: they are dropouts, which the coordinator records,
        and counting them would flag flaky but honest sites as senders of bad updates.
    spec : Mapping[str, TensorSpec]
        Expected layout of every update.
    max_norm : float or None
        Bound on each update's L2 norm (None: no bound).

    Returns
    -------
    tuple[list[AcceptedUpdate], list[Rejection]]
        Accepted updates in reply order, and one rejection per refused reply.
    """
    accepted: list[AcceptedUpdate] = []
    rejections: list[Rejection] = []
    for reply in replies:
        if reply.has_error():
            continue  # a dropout, not a bad update: the coordinator records it as dropped
        try:
            accepted.append(check_reply(reply, spec, max_norm))
        except InvalidUpdateError as err:
            rejections.append(Rejection(reply.metadata.src_node_id, err.check, err.reason))
    return accepted, rejections
