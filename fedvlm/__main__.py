"""`python -m fedvlm ...` runs the CLI (same as the `fedvlm` console script)."""

from fedvlm.cli import main

raise SystemExit(main())
