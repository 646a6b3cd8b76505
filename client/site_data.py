"""Find this node's local data: an imagefolder on disk, or a simulated synthetic site."""

from functools import lru_cache

from fedvlm.config import NodeSettings, SimulationSettings
from fedvlm.data.imagefolder import load_imagefolder
from fedvlm.data.partition import synthetic_site
from fedvlm.data.site import SiteData


@lru_cache(maxsize=8)
def load_site(node: NodeSettings, sim: SimulationSettings, seed: int) -> SiteData:
    """Load (once per process) the data this node trains and validates on.

    Cached because a simulation worker serves many rounds and decoding images each round
    would dominate a tiny model's step time. Both arguments are frozen dataclasses.
    """
    if node.data_path is not None:
        return load_imagefolder(node.data_path)
    assert node.partition_id is not None and node.num_partitions is not None
    return synthetic_site(
        node.partition_id,
        node.num_partitions,
        n_train=sim.examples_per_site,
        n_val=sim.val_examples_per_site,
        label_alpha=sim.label_alpha,
        acquisition_skew=sim.acquisition_skew,
        seed=seed,
    )
