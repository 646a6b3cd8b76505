"""Importing the privacy package must not make every Flower log line print twice."""

import subprocess
import sys
from pathlib import Path

# In a fresh interpreter: under pytest the root logger already has handlers, which makes
# Opacus' `logging.basicConfig()` a no-op and would hide the leak.
PROBE = """
import logging
import privacy.dp_sgd
leaked = [h for h in logging.getLogger().handlers
          if h.formatter is not None and h.formatter.datefmt == "%m/%d/%Y %H:%M:%S"]
print(len(leaked))
"""


def test_no_root_handler_left_by_opacus():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "0", out.stderr
