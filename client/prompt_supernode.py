"""Flower's ``flower-supernode``, with its fixed waits between polls shortened.

The SuperNode's main loop in flwr 1.42 (``flwr.supernode.start_client_internal``) asks the
SuperLink for a message and, when none is there, sleeps a fixed 3 s (``time.sleep(3)``);
while a ClientApp runs it looks for the reply every 0.5 s. Neither is configurable. So a
message that reaches the SuperLink just after a poll waits up to 3 s before the node sees it,
and every round has at least two such messages per site (train, evaluate; secure aggregation
five more): seconds per round in which no site works, several times a warm site's work.

This entry point runs Flower's own ``flower_supernode`` unchanged (argument parsing,
connection, authentication, message handling) after giving that one module a ``time`` whose
``sleep`` waits at most ``FEDVLM_SUPERNODE_POLL_INTERVAL`` seconds. The price is one small
request to the SuperLink per interval while idle (see `client.launch`).

Run as ``python -m client.prompt_supernode <flower-supernode arguments>``.
"""

from __future__ import annotations

import os
import sys
import time
from types import ModuleType

POLL_ENV = "FEDVLM_SUPERNODE_POLL_INTERVAL"


class CappedSleep:
    """Stands in for the ``time`` module: ``sleep`` is capped, everything else is time's."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, but at most the cap."""
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def install(module: ModuleType, cap: float) -> None:
    """Cap every ``time.sleep`` that ``module`` makes (it must ``import time``)."""
    if module.__dict__.get("time") is not time:
        raise RuntimeError(f"{module.__name__} no longer uses the time module as pinned flwr did")
    module.time = CappedSleep(cap)


def main() -> int:
    """Run flower-supernode with the interval from ``FEDVLM_SUPERNODE_POLL_INTERVAL``."""
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    install(start_client_internal, float(os.environ[POLL_ENV]))
    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
