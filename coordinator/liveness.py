"""Sites that vanish must not stall the federation.

Flower's FedAvg sampling waits *forever* for ``min_available_nodes`` to be connected, and a
round's `send_and_receive` simply returns fewer replies when a site dies (after
``round-timeout``). This module bounds the first wait, sends evaluation only to sites that
are still there, names the sites that did not answer, and stops the run with a clear message
when too few answered to aggregate.
"""

import copy
import time
from collections.abc import Collection, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvlm.errors import FedVLMError


class RoundFailedError(FedVLMError):
    """A round that cannot produce a new global adapter: the run stops after recording it.

    ``details`` (who dropped, the sites' own error reasons, the strategy's rejections) go
    into the round's ledger row, so the reason is on record, not only in a console.
    """

    def __init__(
        self,
        message: str,
        details: dict | None = None,
        replies: Iterable[Message] = (),
        bytes_down: int = 0,
    ) -> None:
        super().__init__(message)
        self.details = details or {}
        # What the round did cost although it failed: the replies' energy and bytes.
        self.replies = [m for m in replies if not m.has_error()]
        self.bytes_down = bytes_down


class NotEnoughSitesError(RoundFailedError):
    """Fewer sites are connected or answered than the run's minimum."""


def error_reasons(replies: Iterable[Message]) -> dict[str, str]:
    """Each error reply's reason by node id: what the site said went wrong."""
    return {str(m.metadata.src_node_id): m.error.reason for m in replies if m.has_error()}


def _reasons_text(errors: dict[str, str]) -> str:
    return "".join(f"\n  node {node}: {reason}" for node, reason in sorted(errors.items()))


def wait_for_nodes(grid: Grid, needed: int, timeout: float, poll: float = 1.0) -> list[int]:
    """Wait until `needed` nodes are connected, at most `timeout` seconds; return their ids.

    Raises
    ------
    NotEnoughSitesError
        If fewer than `needed` nodes are connected when the time is up.
    """
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= needed:
            return nodes
        if time.monotonic() >= deadline:
            raise NotEnoughSitesError(
                f"only {len(nodes)} of the {needed} sites required (min-available-nodes) are "
                f"connected after waiting {timeout:.0f}s (node-wait-timeout); stopping instead "
                "of waiting forever. Start the missing sites' nodes, then resume this run."
            )
        time.sleep(poll)


def dropped_nodes(sent: Iterable[Message], replies: Iterable[Message]) -> list[int]:
    """Nodes that were sent a message but sent back no valid reply (error or timeout)."""
    answered = {m.metadata.src_node_id for m in replies if not m.has_error()}
    return sorted({m.metadata.dst_node_id for m in sent} - answered)


def require_replies(
    server_round: int,
    answered: int,
    minimum: int,
    dropped: list[int],
    replies: Iterable[Message] = (),
    bytes_down: int = 0,
) -> None:
    """Stop the run when fewer than `minimum` sites answered this round.

    Raises
    ------
    NotEnoughSitesError
        Naming the round, the count, the nodes that dropped and each site's own reason
        (from the error `replies`); it carries the valid replies for the round's energy.
    """
    if answered < minimum:
        replies = list(replies)
        errors = error_reasons(replies)
        raise NotEnoughSitesError(
            f"round {server_round}: only {answered} site(s) replied, fewer than "
            f"min-train-nodes = {minimum}; nodes that dropped, failed or timed out "
            f"(round-timeout): {dropped}. The run stops here; the last completed round is "
            "checkpointed, so it can be resumed (resume = <run folder>) once enough sites "
            f"are back.{_reasons_text(errors)}",
            {"dropped": dropped, "errors": errors},
            replies,
            bytes_down,
        )


class _ConnectedNodes:
    """A read-only view of a `Grid` that lists only the given, still connected nodes.

    Why: Flower's ``configure_evaluate`` samples through ``sample_nodes``, which polls
    ``get_node_ids()`` until ``min_available_nodes`` are connected, with no timeout. After a
    site dies mid-round that loop never ends; sampling from this view, with the strategy's
    minimums capped at what the view holds, cannot wait.
    """

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid = grid
        self._nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)


def evaluation_messages(
    strategy: Strategy,
    grid: Grid,
    server_round: int,
    arrays: ArrayRecord,
    candidates: Collection[int] | None = None,
) -> list[Message]:
    """The strategy's evaluate messages, sampled only among connected `candidates`.

    `candidates` are the round's train survivors (None: every connected node, as before the
    first round). The strategy still decides the sample (``fraction-evaluate``) and builds the
    messages; it is copied, never changed, to cap its minimums at the nodes still there.
    """
    connected = [node for node in grid.get_node_ids() if candidates is None or node in candidates]
    if not connected:
        return []
    view = copy.copy(strategy)
    for minimum in ("min_available_nodes", "min_evaluate_nodes"):
        if hasattr(view, minimum):
            setattr(view, minimum, min(getattr(view, minimum), len(connected)))
    view_grid = _ConnectedNodes(grid, connected)
    return list(view.configure_evaluate(server_round, arrays, ConfigRecord(), view_grid))
