"""Sites that vanish must not stall the federation.

Flower's FedAvg sampling waits *forever* for ``min_available_nodes`` to be connected, and a
round's `send_and_receive` simply returns fewer replies when a site dies (after
``round-timeout``). This module bounds the first wait, names the sites that did not answer,
and stops the run with a clear message when too few answered to aggregate.
"""

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedvlm.errors import FedVLMError


class NotEnoughSitesError(FedVLMError):
    """Fewer sites are connected or answered than the run's minimum."""


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


def require_replies(server_round: int, answered: int, minimum: int, dropped: list[int]) -> None:
    """Stop the run when fewer than `minimum` sites answered this round.

    Raises
    ------
    NotEnoughSitesError
        Naming the round, the count and the nodes that dropped.
    """
    if answered < minimum:
        raise NotEnoughSitesError(
            f"round {server_round}: only {answered} site(s) replied, fewer than "
            f"min-train-nodes = {minimum}; nodes that dropped or timed out (round-timeout): "
            f"{dropped}. The run stops here; the last completed round is checkpointed, so "
            "it can be resumed (resume = <run folder>) once enough sites are back."
        )
