"""Privacy protections of fedvlm: differential privacy and secure aggregation.

Sub-packages import only `fedvlm`, so both the client and the coordinator can use them.
"""

import logging

# Opacus calls `logging.basicConfig()` when imported (opacus/utils/module_utils.py), which
# gives the root logger a handler: every Flower log line would then print twice, once in
# Flower's format and once in Opacus'. Import it here, before any submodule does, and take
# back exactly the handler it added.
_before = set(logging.getLogger().handlers)
import opacus  # noqa: E402, F401  (imported for the side effect undone below)

for _handler in set(logging.getLogger().handlers) - _before:
    logging.getLogger().removeHandler(_handler)
