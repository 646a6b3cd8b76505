"""Non-IID simulated sites for the synthetic radiograph task, and the coordinator's test set.

Two kinds of skew, each set by one knob: label skew (each site's distribution over lesion counts,
which drives every answer, is drawn from a Dirichlet) and acquisition skew (each site's scanner
contrast, noise and brightness). Every random stream is keyed by (seed, purpose, site id), so a
site's data does not depend on how many sites exist, and no two streams — hence no site's data
and the held-out set — coincide.
"""

import numpy as np

from fedvlm.data.example import VQAExample
from fedvlm.data.radiograph import (
    MAX_LESIONS,
    Acquisition,
    make_examples_with_counts,
    skewed_acquisition,
)
from fedvlm.data.site import SiteData
from fedvlm.errors import ConfigError

# Stream purposes: the second word of every rng key.
_PROFILE, _TRAIN, _VAL, _HELDOUT = 0, 1, 2, 3


def _positive_int(key: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"must be a positive integer, got {value!r}")


def site_profile(
    site_id: int, *, label_alpha: float, acquisition_skew: float, seed: int
) -> tuple[np.ndarray, Acquisition]:
    """The lesion-count distribution and scanner of site ``site_id``.

    Both come from the site's own stream, so site ``i`` is the same whether 2 or 20 sites are
    simulated. Small ``label_alpha`` concentrates each site on few lesion counts.
    """
    rng = np.random.default_rng([seed, _PROFILE, site_id])
    lesion_probs = rng.dirichlet(np.full(MAX_LESIONS + 1, label_alpha))
    return lesion_probs, skewed_acquisition(rng, acquisition_skew)


def synthetic_site(
    site_id: int,
    num_sites: int,
    *,
    n_train: int,
    n_val: int,
    label_alpha: float,
    acquisition_skew: float,
    seed: int,
    image_size: int = 64,
) -> SiteData:
    """Generate the train and validation splits of one simulated site.

    Parameters
    ----------
    site_id : int
        Index of this site, in ``[0, num_sites)`` (Flower's ``partition-id``).
    num_sites : int
        Number of simulated sites (Flower's ``num-partitions``); only validates ``site_id``.
    n_train, n_val : int
        Sizes of the train and validation splits (``sim-examples-per-site``,
        ``sim-val-examples-per-site``). Validation follows the site's own distribution.
    label_alpha : float
        Dirichlet concentration of the lesion-count distribution (``sim-label-alpha``), > 0.
    acquisition_skew : float
        How far scanners may differ from neutral (``sim-acquisition-skew``), in [0, 1];
        0 gives identical scanners.
    seed : int
        Run seed.
    image_size : int
        Side of the square images in pixels.
    """
    _positive_int("num-partitions", num_sites)
    if isinstance(site_id, bool) or not isinstance(site_id, int) or not 0 <= site_id < num_sites:
        raise ConfigError("partition-id", f"must be in [0, {num_sites}), got {site_id!r}")
    _positive_int("sim-examples-per-site", n_train)
    _positive_int("sim-val-examples-per-site", n_val)
    _positive_int("image-size", image_size)
    if not label_alpha > 0:
        raise ConfigError("sim-label-alpha", f"must be > 0, got {label_alpha!r}")
    if not 0 <= acquisition_skew <= 1:
        raise ConfigError("sim-acquisition-skew", f"must be in [0, 1], got {acquisition_skew!r}")

    lesion_probs, acquisition = site_profile(
        site_id, label_alpha=label_alpha, acquisition_skew=acquisition_skew, seed=seed
    )
    splits = {}
    for purpose, n in ((_TRAIN, n_train), (_VAL, n_val)):
        rng = np.random.default_rng([seed, purpose, site_id])
        counts = rng.choice(MAX_LESIONS + 1, size=n, p=lesion_probs)
        splits[purpose] = make_examples_with_counts(rng, counts, [acquisition] * n, image_size)
    description: dict[str, str | int | float] = {
        "site_id": site_id,
        "num_sites": num_sites,
        "n_train": n_train,
        "n_val": n_val,
        "label_alpha": float(label_alpha),
        "acquisition_skew": float(acquisition_skew),
        **{f"p_lesions_{k}": float(p) for k, p in enumerate(lesion_probs)},
        "contrast": acquisition.contrast,
        "noise": acquisition.noise,
        "intensity": acquisition.intensity,
        "image_size": image_size,
    }
    return SiteData(
        train=splits[_TRAIN], val=splits[_VAL], name=f"site-{site_id}", description=description
    )


def heldout_set(n: int, *, seed: int, image_size: int = 64) -> list[VQAExample]:
    """The coordinator's test set: balanced lesion counts, scanners over the sites' full range.

    Balanced counts make accuracy comparable across runs whatever the label skew; drawing each
    image's scanner at full skew covers every site's look. Its stream key differs from every
    site's, so it never repeats site data.
    """
    _positive_int("heldout-examples", n)
    _positive_int("image-size", image_size)
    rng = np.random.default_rng([seed, _HELDOUT])
    counts = rng.permutation(np.arange(n) % (MAX_LESIONS + 1))
    acquisitions = [skewed_acquisition(rng, 1.0) for _ in range(n)]
    return make_examples_with_counts(rng, counts, acquisitions, image_size)
