"""Collect the sites' replies as soon as they are in, not up to 3 s later.

A deployed ServerApp talks to the SuperLink through Flower's ``HttpGrid``, whose
``send_and_receive`` pushes the messages and then pulls the replies every 3 s (a fixed
``time.sleep(3)`` in flwr 1.42). A round has at least two exchanges (train, evaluate) and
secure aggregation five more, so each waited on average 1.5 s after the last reply had
arrived: seconds per round that no site spent working. `prompt_replies` wraps that grid once,
in the round loop, so every phase (plain and secure training, evaluation) polls after a
tenth of the time waited so far, from `FIRST_PULL` to `LAST_PULL` seconds
(`fedvlm.polling`); Flower's own pull (``pull_messages``) does the work.

Other grids are left as they are: the simulation engine's ``InMemoryGrid`` already polls
every 0.1 s, and the in-process grids of the tests answer at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.superlink.grid import HttpGrid

from fedvlm.polling import next_wait

FIRST_PULL, LAST_PULL = 0.1, 1.0  # seconds between pulls: the shortest, the longest


class PromptReplies:
    """A view of a `Grid` whose ``send_and_receive`` polls promptly (see the module).

    Everything else (node ids, pushing, pulling, run) is the wrapped grid's.
    """

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Push ``messages``; return the replies that arrive before ``timeout`` seconds.

        The same contract as Flower's (all replies, or those in by the deadline; an error
        reply is a reply), only the wait between pulls is shorter.
        """
        waiting = {i for i in self._grid.push_messages(messages) if i}
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        replies: list[Message] = []
        while waiting:
            arrived = list(self._grid.pull_messages(waiting))
            replies += arrived
            waiting -= {m.metadata.reply_to_message_id for m in arrived}
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(next_wait(time.monotonic() - started, FIRST_PULL, LAST_PULL))
        return replies

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)


def prompt_replies(grid: Grid) -> Grid | PromptReplies:
    """``grid`` with prompt reply polling if it is Flower's deployed ``HttpGrid``."""
    return PromptReplies(grid) if isinstance(grid, HttpGrid) else grid
