"""The name a site goes by in every reply: what the coordinator's reader sees.

A node id is Flower's random handle, unreadable to a hospital; the name travels in each
reply (plain train, secure masked input, evaluate) so the coordinator's console, ledger,
report and card can say who is who. The name also sets a deployed site's training seed
(``site_seed``).
"""

import hashlib

from flwr.app import ConfigRecord, Context

from fedvlm import contract
from fedvlm.settings_registry import Scope, setting

SITE_NAME = setting(
    contract.SITE_NAME,
    str,
    "",
    "The name the site goes by in every reply (`fedvlm node` sets the registered name); "
    "empty: site-<partition> in simulation.",
    scope=Scope.NODE,
)


def site_name(context: Context) -> str:
    """This site's `site-name` node config, else `site-<partition>`, else `node-<id>`."""
    name = SITE_NAME.read(context.node_config)
    if name:
        return name
    partition = context.node_config.get("partition-id")
    return f"site-{partition}" if partition is not None else f"node-{context.node_id}"


def site_record(context: Context) -> ConfigRecord:
    """The record (`contract.SITE`) that names this site in a reply."""
    return ConfigRecord({contract.SITE_NAME: site_name(context)})


def site_seed(context: Context) -> int:
    """This site's offset to the run's seed, so that no two sites train on one seed.

    A simulated site has its ``partition-id``. A deployed one has none (Flower sets it only in
    simulation), so every site would shuffle and sample its batches alike in a round; its
    name, stable across restarts and resumes, gives it its own 32-bit offset instead.
    """
    partition = context.node_config.get("partition-id")
    if partition is not None:
        return int(partition)
    return int.from_bytes(hashlib.sha256(site_name(context).encode()).digest()[:4], "little")
