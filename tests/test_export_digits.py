"""The digits exporter: valid, label-skewed site folders and a held-out folder no site holds."""

import json
from collections import Counter

import numpy as np
from PIL import Image

from fedvlm.data import load_imagefolder, validate_imagefolder
from simulations.export_digits import main as export_main


def _answers(folder) -> Counter:
    with open(folder / "metadata.jsonl") as metadata:
        return Counter(json.loads(line)["answer"] for line in metadata)


def _pixels(folder) -> set[bytes]:
    return {np.asarray(Image.open(p)).tobytes() for p in folder.glob("*.png")}


def test_export_writes_valid_skewed_sites_and_a_disjoint_heldout(tmp_path):
    export_main(["--out", str(tmp_path), "--sites", "3", "--alpha", "0.3", "--seed", "1"])
    sites = [tmp_path / f"site-{i}" for i in range(3)]
    for folder in [*sites, tmp_path / "heldout"]:
        validate_imagefolder(folder)  # raises with file and line on any problem
    heldout = load_imagefolder(tmp_path / "heldout")
    assert len(heldout.train) + len(heldout.val) == 360  # 20 % of 1,797
    assert set(_answers(tmp_path / "heldout")) == {str(d) for d in range(10)}
    counts = [_answers(folder) for folder in sites]
    assert sum(sum(c.values()) for c in counts) == 1797 - 360
    shares = np.array([[c[str(d)] / sum(c.values()) for d in range(10)] for c in counts])
    assert (shares < 0.02).any()  # Dirichlet skew: some site (almost) lacks some digit...
    assert np.abs(shares - 0.1).max() > 0.1  # ...and some digit is far above its IID share
    site = load_imagefolder(sites[0])
    assert site.train and site.val and site.train[0].question == "which digit is this?"
    # No held-out image is at any site (the exported scans are pairwise distinct enough for
    # the held-out images to be checked by their pixels).
    held = _pixels(tmp_path / "heldout")
    assert all(not held & _pixels(folder) for folder in sites)
