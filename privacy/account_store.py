"""Where a site keeps its sample-level privacy account: a file on the site, outside any run.

Flower's ``context.state`` lives as long as one Flower run, and a resumed federation is a new
run: an account kept there is lost exactly when the coordinator crashed after the sites had
released an update, and the coordinator's own record (its last checkpoint) lacks that round.
So each site writes its account to a node-local JSON file, keyed by federation and site,
atomically (temp file, fsync, ``os.replace``) *before* the update leaves the site; every
later round, resumed run or restarted node starts from it.

The federation key is the coordinator's federation id (a random id fixed when the run folder
is created, kept by a resume) unless the site pins its own with the node-config key
``privacy-federation``: a site that pins it cannot have its account reset by a coordinator
that announces a new id.

A message handled twice is counted once: the file also keeps the id of the message whose
releases it last recorded and the history before them. A site worker that dies after writing
the file but before its reply left is asked again with the same message (`client.node_app`
retries once); that retry starts from the history before the lost attempt, whose update
never left the site, instead of adding its steps a second time.

Directory: node-config ``state-dir``, else the environment variable ``FEDVLM_STATE_DIR``,
else ``~/.fedvlm/state``.
"""

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedvlm.atomic import write_atomic
from fedvlm.errors import ConfigError
from fedvlm.settings_registry import Scope, setting
from privacy.accounting import PrivacyHistory

STATE_DIR = setting(
    "state-dir",
    str,
    "",
    "Where a site keeps what must outlive a run (its privacy accounts); empty: "
    "$FEDVLM_STATE_DIR, else ~/.fedvlm/state.",
    scope=Scope.NODE,
)
FEDERATION = setting(
    "privacy-federation",
    str,
    "",
    "The federation a site's privacy account is kept under; empty: the name the coordinator "
    "announces (pin it so a renamed run cannot restart the site's ε at 0).",
    scope=Scope.NODE,
)
STATE_DIR_ENV = "FEDVLM_STATE_DIR"
_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def state_dir(node_config: Mapping[str, Any]) -> Path:
    """The node's state directory (see the module docstring)."""
    configured = STATE_DIR.read(node_config) or os.environ.get(STATE_DIR_ENV, "")
    return Path(configured).expanduser() if configured else Path.home() / ".fedvlm" / "state"


class AccountStore:
    """One site's account file for one federation.

    Parameters
    ----------
    path : Path
        The JSON file (`for_site` builds it from the node config).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_site(
        cls, node_config: Mapping[str, Any], announced_federation: str, site: int
    ) -> "AccountStore":
        """The file of ``site`` in the pinned federation, else in the announced one.

        Raises
        ------
        ConfigError
            When the federation name could escape the directory (naming the key).
        """
        pinned = FEDERATION.read(node_config)
        federation = pinned or announced_federation or "default"
        if not _SAFE.match(federation):
            raise ConfigError(
                FEDERATION.key, f"{federation!r}: use letters, digits, '.', '_' or '-' only"
            )
        return cls(state_dir(node_config) / "privacy" / f"{federation}.site-{site}.json")

    def load(self, accountant: str, message: str = "") -> PrivacyHistory:
        """The stored history ([] when the site never trained in this federation).

        ``message``: the id of the message about to be handled; if the stored history was
        last written for that same message (a retry), the history before it is returned.
        """
        if not self.path.exists():
            return PrivacyHistory(accountant)
        data = json.loads(self.path.read_text())
        if message and data.get("message") == message:
            data = data["before"]
        return PrivacyHistory.from_lists(accountant, data["noise"], data["rate"], data["steps"])

    def save(
        self, history: PrivacyHistory, message: str = "", before: PrivacyHistory | None = None
    ) -> None:
        """Replace the stored history, atomically and durably.

        ``message`` and ``before``: the id of the message whose releases ``history`` records
        last, and the history before them (see `load`).
        """
        record = _lists(history)
        if message:
            record.update(
                message=message, before=_lists(before or PrivacyHistory(history.accountant))
            )
        write_atomic(self.path, json.dumps(record).encode())


def _lists(history: PrivacyHistory) -> dict[str, Any]:
    lists = history.to_lists()
    return {key: lists[key] for key in ("noise", "rate", "steps")}
