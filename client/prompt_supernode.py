"""Flower's ``flower-supernode``, with its fixed waits between polls shortened.

The SuperNode's main loop in flwr 1.42 (``flwr.supernode.start_client_internal``) asks the
SuperLink for a message and, when none is there, sleeps a fixed 3 s (``time.sleep(3)``);
while a ClientApp runs it looks for the reply every 0.5 s. Neither is configurable. So a
message that reaches the SuperLink just after a poll waits up to 3 s before the node sees it,
and every round has at least two such messages per site (train, evaluate; secure aggregation
five more): seconds per round in which no site works, several times a warm site's work.

This entry point runs Flower's own ``flower_supernode`` unchanged (argument parsing,
connection, authentication, message handling) after giving that one module a ``time`` whose
``sleep`` waits less: the idle poll (Flower's 3 s) a tenth of the time the node has been idle,
from ``FEDVLM_SUPERNODE_POLL_INTERVAL`` seconds up to Flower's 3 s (`fedvlm.polling`: a
message is noticed within about 10% of the idle time it ends, and an idle node does not
load the SuperLink with requests), the local waits for a reply at most that interval.

Run as ``python -m client.prompt_supernode <flower-supernode arguments>``.
"""

from __future__ import annotations

import os
import sys
import time
from types import ModuleType

from fedvlm.polling import next_wait

POLL_ENV = "FEDVLM_SUPERNODE_POLL_INTERVAL"
IDLE_POLL = 3.0  # flwr 1.42's sleep when the SuperLink had no message (tests check the source)


class PromptSleep:
    """Stands in for the ``time`` module: ``sleep`` waits less, everything else is time's.

    Parameters
    ----------
    floor : float
        The shortest idle poll, and the longest of the other (local) waits.
    """

    def __init__(self, floor: float) -> None:
        self.floor = floor
        self.idle_since: float | None = None

    def sleep(self, seconds: float) -> None:
        """Sleep less than Flower asked: see the module docstring."""
        now = time.monotonic()
        if seconds < IDLE_POLL:  # waiting for a reply: the node is busy, its idle time over
            self.idle_since = None
            time.sleep(min(seconds, self.floor))
            return
        if self.idle_since is None:
            self.idle_since = now
        time.sleep(next_wait(now - self.idle_since, self.floor, seconds))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def install(module: ModuleType, floor: float) -> None:
    """Shorten every ``time.sleep`` that ``module`` makes (it must ``import time``)."""
    if module.__dict__.get("time") is not time:
        raise RuntimeError(f"{module.__name__} no longer uses the time module as pinned flwr did")
    module.time = PromptSleep(floor)


def main() -> int:
    """Run flower-supernode with the interval from ``FEDVLM_SUPERNODE_POLL_INTERVAL``."""
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    install(start_client_internal, float(os.environ[POLL_ENV]))
    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
