"""The `fedvlm` command line: the top layer, which dispatches to every other package.

Entry point: `cli.main:main` (the `fedvlm` console script of `[project.scripts]`).
"""
