"""Find this node's local data: its imagefolder on disk, or its share of a simulation.

A simulated node (Flower gives it a ``partition-id``) holds what ``site-data`` says: a
synthetic site, the ``partition-id``-th folder under ``sim-sites``, or a partition of
``sim-dataset``. Real images go through the same checked reader as a deployed site's folder.
"""

from functools import lru_cache

from fedvlm.config import NodeSettings, SimulationSettings
from fedvlm.data.imagefolder import load_imagefolder
from fedvlm.data.partition import synthetic_site
from fedvlm.data.real_sites import partitioned_sites, site_folders
from fedvlm.data.site import SiteData
from fedvlm.errors import ConfigError


@lru_cache(maxsize=8)
def load_site(
    node: NodeSettings, sim: SimulationSettings, seed: int, heldout_path: str = ""
) -> SiteData:
    """Load (once per process) the data this node trains and validates on.

    ``heldout_path`` (the run's ``heldout-path``) is never one of the simulated site folders.

    Cached because a simulation worker serves many rounds and decoding images each round
    would dominate a tiny model's step time. Both arguments are frozen dataclasses.
    """
    if node.data_path is not None:
        return load_imagefolder(node.data_path)
    assert node.partition_id is not None and node.num_partitions is not None
    if sim.site_data == "folders":
        if not sim.sites_dir:
            raise ConfigError("sim-sites", 'site-data = "folders" in simulation needs sim-sites')
        folders = site_folders(sim.sites_dir, exclude=heldout_path)
        if len(folders) != node.num_partitions:
            raise ConfigError(
                "num-supernodes",
                f"{sim.sites_dir} holds {len(folders)} site folders, not {node.num_partitions}",
            )
        return load_imagefolder(folders[node.partition_id])
    if sim.site_data == "partitioned":
        return partitioned_sites(sim, node.num_partitions, seed)[node.partition_id]
    return synthetic_site(
        node.partition_id,
        node.num_partitions,
        n_train=sim.examples_per_site,
        n_val=sim.val_examples_per_site,
        label_alpha=sim.label_alpha,
        acquisition_skew=sim.acquisition_skew,
        seed=seed,
    )
