"""How long to wait before asking again whether something has arrived.

Flower's processes poll each other: the ServerApp for replies, the SuperNode for messages,
the SuperExec for tasks. A fixed short interval answers promptly but costs a request per
interval for as long as nothing comes (on a 2-core machine, three idle SuperNodes polling
every 0.2 s and a ServerApp every 0.1 s kept a third of a core busy); a fixed long one
(Flower's 3 s) wastes seconds per message. Waiting a tenth of the time already waited,
between a floor and a ceiling, bounds both: what arrives is noticed within about 10% of
the wait it ended (at least the floor), and a long wait makes logarithmically few requests.
"""

FRACTION = 0.1  # of the time already waited


def next_wait(waited: float, floor: float, ceiling: float) -> float:
    """Seconds to sleep before the next poll, after ``waited`` seconds without result."""
    return min(ceiling, max(floor, FRACTION * waited))
