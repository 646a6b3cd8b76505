"""Abstract base of every fedvlm strategy: validate, average, apply.

Clients send *updates* (local adapter minus the global adapter they received), not
weights. Every strategy therefore does the same three things in `aggregate_train`:

1. validate each reply on its own (`strategies.validation`), so a broken site is
   dropped and named in the ledger instead of ruining the round;
2. combine the accepted updates, by default their mean weighted by ``num-examples``;
3. turn that combined update into the next global adapter (`apply_mean_update`): plain
   addition for FedAvg, a server optimizer step for FedAdam/FedYogi.

Step 3 only ever sees a weighted mean, so a strategy whose step 2 is the weighted mean
(``linear = True``) also works when the coordinator only learns the *sum* of updates
(secure aggregation, central DP): it calls `apply_update_sum` instead.

Sampling, message construction and metric aggregation are Flower's FedAvg, unchanged.
"""

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg

from fedvlm import contract
from fedvlm.errors import ConfigError
from strategies.validation import (
    AcceptedUpdate,
    InvalidUpdateError,
    Rejection,
    TensorSpec,
    check_update,
    spec_of,
    validate_replies,
)

StateDict = dict[str, np.ndarray | float | int]

_ROUND = "round"
_GLOBAL = "global/"
_REJECTIONS = "rejections/"


def weighted_sum(
    updates: Sequence[dict[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Return ``sum_i w_i u_i`` per tensor, accumulated in float64.

    Float64 accumulation keeps the result independent of reply order to well below
    float32 resolution, so a resumed or re-ordered round gives the same adapter.
    """
    total: dict[str, np.ndarray] = {}
    for update, weight in zip(updates, weights, strict=True):
        for name, tensor in update.items():
            term = tensor.astype(np.float64) * weight
            total[name] = total[name] + term if name in total else term
    return total


def weighted_mean(
    updates: Sequence[dict[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Return ``sum_i w_i u_i / sum_i w_i`` per tensor (`weighted_sum`, then one division)."""
    total = float(sum(weights))
    return {name: summed / total for name, summed in weighted_sum(updates, weights).items()}


class AdapterStrategy(FedAvg, ABC):
    """Base of strategies that aggregate adapter *updates* into a new global adapter.

    Parameters
    ----------
    max_update_norm : float or None (default: None)
        Replies whose update has a larger L2 norm are rejected (None: no bound).
    clip_update_norm : float or None (default: None)
        Norm bounding (Sun et al., 2019): accepted updates with a larger L2 norm are
        scaled down to it before combining, which limits what one site can do to the
        global adapter without discarding its work. Needs individual updates, so it
        makes the strategy non-linear (None: no clipping).
    **fedavg_kwargs
        Passed to Flower's `FedAvg` (``fraction_train``, ``min_train_nodes``, ...).
        The record and weight keys are fixed to the fedvlm contract.

    Attributes
    ----------
    linear : bool
        True when the combined update is the weighted mean of the updates, so the
        strategy can run from a sum of updates (secure aggregation, central DP). False
        for rules that need each update (median, trimmed mean, stacking) and whenever
        ``clip_update_norm`` is set.
    last_rejections : list[Rejection]
        Replies refused by the last `aggregate_train`, with reasons (for the ledger).
    rejection_counts : collections.Counter[int]
        Rejected replies per node over the whole run (checkpointed), so a site that
        keeps sending bad updates can be reported.
    """

    linear_in_updates: ClassVar[bool] = True
    # Whether a site may train a smaller LoRA rank than the run's (node config lora-rank).
    accepts_site_ranks: ClassVar[bool] = False

    def __init__(
        self,
        *,
        max_update_norm: float | None = None,
        clip_update_norm: float | None = None,
        **fedavg_kwargs: object,
    ) -> None:
        for key, bound in (
            ("max-update-norm", max_update_norm),
            ("clip-update-norm", clip_update_norm),
        ):
            if bound is not None and not bound > 0:
                raise ConfigError(key, f"must be positive or unset, got {bound}")
        super().__init__(
            weighted_by_key=contract.NUM_EXAMPLES,
            arrayrecord_key=contract.ARRAYS,
            configrecord_key=contract.CONFIG,
            **fedavg_kwargs,  # type: ignore[arg-type]
        )
        self.max_update_norm = max_update_norm
        self.clip_update_norm = clip_update_norm
        self.last_rejections: list[Rejection] = []
        self.rejection_counts: Counter[int] = Counter()
        self.current_round = 0
        self.current_global: dict[str, np.ndarray] | None = None

    @property
    def linear(self) -> bool:
        """Whether the new global depends on the updates only through their weighted sum."""
        return self.linear_in_updates and self.clip_update_norm is None

    # --- the hooks a concrete strategy fills in -------------------------------------

    @abstractmethod
    def apply_mean_update(
        self, server_round: int, mean_update: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Return the next global adapter from the combined update.

        Parameters
        ----------
        server_round : int
            The round being aggregated (1-based).
        mean_update : dict[str, np.ndarray]
            Combined update (float64), same names and shapes as `current_global`.

        Returns
        -------
        dict[str, np.ndarray]
            Next global adapter; cast back to the global's dtypes by the caller.
        """

    def combine_updates(self, accepted: Sequence[AcceptedUpdate]) -> dict[str, np.ndarray]:
        """Combine accepted updates; the weighted mean unless a robust rule overrides it."""
        return weighted_mean([a.update for a in accepted], [a.num_examples for a in accepted])

    def next_global(
        self, server_round: int, accepted: Sequence[AcceptedUpdate]
    ) -> dict[str, np.ndarray]:
        """Next global adapter from the accepted updates: combine, then apply.

        Strategies whose result is not "global + combined update" (stacking changes the
        rank) override this instead of the two hooks.
        """
        return self.apply_mean_update(server_round, self.combine_updates(accepted))

    def update_spec(self) -> dict[str, TensorSpec]:
        """Layout every update must have this round: that of the global adapter sent."""
        return spec_of(self._require_global())

    # --- Flower's strategy interface ------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global adapter sent, then sample nodes and build messages."""
        self.current_global = {name: array.numpy() for name, array in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate each reply, combine the accepted updates, return the new global.

        Returns ``(None, None)`` when no reply is accepted; `last_rejections` then says
        why. The returned ArrayRecord is the next *global adapter*, not an update.
        """
        accepted = self.accept_replies(replies)
        if not accepted:
            return None, None
        if self.clip_update_norm is not None:
            accepted = [clip_update(a, self.clip_update_norm) for a in accepted]
        new_global = self._keep(server_round, self.next_global(server_round, accepted))
        return new_global, self.aggregate_metrics(a.metrics for a in accepted)

    def accept_replies(
        self, replies: Iterable[Message], max_norm: float | None = None
    ) -> list[AcceptedUpdate]:
        """Validate replies against this strategy's update spec and keep the rejections.

        The strategy owns its record of rejections (`last_rejections`, `rejection_counts`)
        on every path: its own `aggregate_train`, and the client-level DP path, which bounds
        the norm by the DP clip (`max_norm`) instead of ``max_update_norm``.
        """
        bound = self.max_update_norm if max_norm is None else max_norm
        accepted, self.last_rejections = validate_replies(replies, self.update_spec(), bound)
        self.rejection_counts.update(r.node_id for r in self.last_rejections)
        return accepted

    def aggregate_metrics(self, metrics: Iterable[MetricRecord]) -> MetricRecord | None:
        """The round's train metrics over the replies whose updates went into the new global."""
        return self.train_metrics_aggr_fn([_metrics_only(m) for m in metrics], self.weighted_by_key)

    def aggregate_sum(
        self,
        server_round: int,
        accepted: Sequence[AcceptedUpdate],
        add_noise: Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Client-level DP: sum the updates at weight 1, let `add_noise` noise it, apply it.

        Weight 1 each makes the sensitivity of the sum exactly the clip bound the updates
        were checked against; the strategy then applies ``noisy sum / m`` like any sum.
        """
        if not accepted:
            return None, None
        update_sum = weighted_sum([a.update for a in accepted], [1.0] * len(accepted))
        noisy = add_noise(update_sum, len(accepted))
        new_global = self.apply_update_sum(server_round, noisy, float(len(accepted)))
        return new_global, self.aggregate_metrics(a.metrics for a in accepted)

    def apply_update_sum(
        self, server_round: int, update_sum: dict[str, np.ndarray], total_weight: float
    ) -> ArrayRecord:
        """Return the new global adapter from the sum of weighted updates only.

        For secure aggregation: the coordinator learns ``sum_i w_i u_i`` and
        ``sum_i w_i`` (already unmasked, noised and validated), never one update.

        Parameters
        ----------
        server_round : int
            The round being aggregated.
        update_sum : dict[str, np.ndarray]
            ``sum_i w_i u_i`` per tensor.
        total_weight : float
            ``sum_i w_i`` (positive).

        Raises
        ------
        ConfigError
            If this strategy is not linear in the updates.
        AggregationError
            If the sum does not fit the global adapter or the weight is not positive.
        """
        require_linear(self, "the coordinator only learns the sum of updates")
        if not total_weight > 0:
            raise AggregationError(f"total weight must be positive, got {total_weight}")
        try:
            check_update(
                {k: np.asarray(v, dtype=np.float32) for k, v in update_sum.items()},
                {k: TensorSpec(s.shape, "float32") for k, s in self.update_spec().items()},
            )
        except InvalidUpdateError as err:
            raise AggregationError(f"update sum rejected ({err.check}): {err.reason}") from err
        mean = {k: np.asarray(v, dtype=np.float64) / total_weight for k, v in update_sum.items()}
        return self._keep(server_round, self.apply_mean_update(server_round, mean))

    # --- checkpointing --------------------------------------------------------------

    def state_dict(self) -> StateDict:
        """Return everything a resumed run needs to continue bit-identically.

        Flat keys: ``round``, ``global/<tensor>``, ``rejections/<node id>``, plus what
        subclasses add (server optimizer moments). Values are numpy arrays or Python
        scalars, ready for ``np.savez``.
        """
        state: StateDict = {_ROUND: self.current_round}
        for name, tensor in (self.current_global or {}).items():
            state[_GLOBAL + name] = tensor.copy()
        for node_id, count in self.rejection_counts.items():
            state[f"{_REJECTIONS}{node_id}"] = count
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what `state_dict` returned."""
        self.current_round = int(state[_ROUND])
        self.current_global = arrays_with_prefix(state, _GLOBAL) or None
        self.rejection_counts = Counter(
            {
                int(k[len(_REJECTIONS) :]): int(v)
                for k, v in state.items()
                if k.startswith(_REJECTIONS)
            }
        )

    # --- internals ------------------------------------------------------------------

    def _require_global(self) -> dict[str, np.ndarray]:
        if self.current_global is None:
            raise AggregationError(
                "no global adapter known: call configure_train (or load_state_dict) first"
            )
        return self.current_global

    def _keep(self, server_round: int, new_global: dict[str, np.ndarray]) -> ArrayRecord:
        """Keep ``new_global`` (in the sent global's dtypes) as the current global; return it."""
        current = self._require_global()
        self.current_global = {
            name: np.asarray(tensor, dtype=current[name].dtype)
            for name, tensor in new_global.items()
        }
        self.current_round = server_round
        return ArrayRecord({k: Array(v) for k, v in self.current_global.items()})


def clip_update(accepted: AcceptedUpdate, max_norm: float) -> AcceptedUpdate:
    """Scale an update down to L2 norm ``max_norm`` if it is larger (direction kept)."""
    norm = float(
        np.sqrt(sum(np.sum(np.square(t, dtype=np.float64)) for t in accepted.update.values()))
    )
    if norm <= max_norm:
        return accepted
    factor = max_norm / norm
    scaled = {name: (t * factor).astype(t.dtype) for name, t in accepted.update.items()}
    return replace(accepted, update=scaled)


def require_linear(strategy: AdapterStrategy, reason: str) -> None:
    """Refuse a strategy that needs individual updates where only their sum exists.

    Parameters
    ----------
    strategy : AdapterStrategy
        The configured strategy.
    reason : str
        Why only a sum is available (for instance "secure aggregation is on").

    Raises
    ------
    ConfigError
        Naming the ``strategy`` key, if the strategy is not linear in the updates.
    """
    if not strategy.linear:
        raise ConfigError(
            "strategy",
            f"{type(strategy).__name__} needs each site's individual update, but {reason}; "
            "choose a linear strategy (fedavg, fedprox, fedadam, fedyogi, ffa-lora, hetlora) "
            "without clip-update-norm",
        )


def _metrics_only(metrics: MetricRecord) -> RecordDict:
    """Wrap a MetricRecord the way Flower's metric aggregation functions expect."""
    return RecordDict({contract.METRICS: metrics})


def arrays_with_prefix(state: StateDict, prefix: str) -> dict[str, np.ndarray]:
    """Return the arrays of ``state`` whose key starts with ``prefix``, prefix removed (copies)."""
    return {
        key[len(prefix) :]: np.asarray(value).copy()
        for key, value in state.items()
        if key.startswith(prefix)
    }
