"""`fedvlm settings`: every run-config and node-config key, from the one registry.

Keys are declared by the modules that read them (`fedvlm.settings_registry.setting`); this
command imports those modules so the registry is complete, and prints it as the reference
table `docs/settings.md` holds (a test keeps the two equal, and pyproject's defaults equal to
the declared ones).
"""

import argparse

from fedvlm.settings_registry import SETTINGS, Setting, markdown_table

DOC_HEADER = """# Settings

Every key a run (`[tool.flwr.app.config]` in `pyproject.toml`, `--run-config`, a scenario's
`[run-config]`) or a node (`--node-config`, `fedvlm node` flags) reads. Generated from the
declarations in the code by `fedvlm settings > docs/settings.md`; "run, node overrides"
means a node's own value wins over the run's. Flower's TOML has no null: `0` or `""` means
"not set" where the meaning says so.

"""


def all_settings() -> list[Setting]:
    """Every declared setting (importing each module that declares some)."""
    import client.site_identity  # noqa: F401
    import coordinator.tracking  # noqa: F401
    import fedvlm.config  # noqa: F401
    import fedvlm.energy.settings  # noqa: F401
    import fedvlm.processes  # noqa: F401
    import fedvlm.runtime  # noqa: F401
    import fedvlm.site_metrics  # noqa: F401
    import privacy.account_store  # noqa: F401
    import privacy.secagg.settings  # noqa: F401
    import privacy.settings  # noqa: F401
    import strategies.settings  # noqa: F401

    return list(SETTINGS.values())


def settings_doc() -> str:
    """The text of `docs/settings.md`."""
    return DOC_HEADER + markdown_table(all_settings())


def _settings(args: argparse.Namespace) -> int:
    print(settings_doc(), end="")
    return 0


def add_settings_command(sub: argparse._SubParsersAction) -> None:
    """Register `fedvlm settings`."""
    command = sub.add_parser("settings", help="print every run-config and node-config key")
    command.set_defaults(func=_settings)
