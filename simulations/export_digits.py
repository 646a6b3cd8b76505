"""Export scikit-learn's handwritten digits as non-IID site folders plus a held-out folder.

``python -m simulations.export_digits --out DIR --sites 3 --alpha 0.5 --seed 0`` writes
``DIR/site-0 ... DIR/site-<n-1>`` and ``DIR/heldout``, each an imagefolder with a
``metadata.jsonl`` in the format every fedvlm site reads (``fedvlm/data/imagefolder.py``), so the
same folders feed ``fedvlm simulate --sites DIR`` and ``fedvlm node --data DIR/site-0``.

Why this dataset: ``load_digits`` (1,797 scanned 8x8 handwritten digits, 10 classes, from UCI) is
shipped inside the scikit-learn package, so a real image task is available offline, nothing is
downloaded. The held-out folder is a stratified share of the images that no site holds; the rest
is split over the sites with Flower Datasets' ``DirichletPartitioner`` on the label, the label
skew a federated benchmark uses, rather than a hand-written split.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

QUESTION = "which digit is this?"
QUESTION_TYPE = "digit"
VALIDATION_SHARE = 0.2  # of each site's images, for the sites' own validation


def digit_image(pixels: np.ndarray) -> Image.Image:
    """One 8x8 scan (ink counts 0..16) as a greyscale PNG-ready image, ink bright, as stored."""
    return Image.fromarray(np.rint(pixels * 255 / 16).astype(np.uint8))


def write_folder(
    folder: Path, images: np.ndarray, labels: np.ndarray, splits: list[str] | None
) -> None:
    """Write ``images`` as ``<index>.png`` and one ``metadata.jsonl`` row per image.

    ``splits=None`` writes no ``split`` field: the held-out folder is evaluated whole, and a
    folder whose rows are all "validation" would not pass as a site folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl", "w") as metadata:
        for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            name = f"{i:04d}.png"
            digit_image(pixels).save(folder / name)
            row = {
                "file_name": name,
                "question": QUESTION,
                "answer": str(int(label)),
                "question_type": QUESTION_TYPE,
            }
            if splits is not None:
                row["split"] = splits[i]
            metadata.write(json.dumps(row) + "\n")


def heldout_split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the site pool and of the held-out images: a stratified, seeded split."""
    indices = np.arange(len(labels))
    pool, heldout = train_test_split(indices, test_size=share, random_state=seed, stratify=labels)
    return pool, heldout


def export(out: Path, *, sites: int, alpha: float, heldout_share: float, seed: int) -> list[int]:
    """Write the site folders and ``heldout``; return each site's number of images."""
    digits = load_digits()
    pool, heldout = heldout_split(digits.target, heldout_share, seed)
    write_folder(out / "heldout", digits.images[heldout], digits.target[heldout], None)
    partitioner = DirichletPartitioner(
        num_partitions=sites, partition_by="label", alpha=alpha, seed=seed, min_partition_size=20
    )
    partitioner.dataset = Dataset.from_dict(
        {"index": pool.tolist(), "label": digits.target[pool].tolist()}
    )
    rng = np.random.default_rng(seed)
    sizes = []
    for site in range(sites):
        rows = np.asarray(partitioner.load_partition(site)["index"])
        splits = ["validation" if u < VALIDATION_SHARE else "train" for u in rng.random(len(rows))]
        write_folder(out / f"site-{site}", digits.images[rows], digits.target[rows], splits)
        sizes.append(len(rows))
    return sizes


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the sites into")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more skew)"
    )
    parser.add_argument("--heldout-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = export(
        args.out,
        sites=args.sites,
        alpha=args.alpha,
        heldout_share=args.heldout_share,
        seed=args.seed,
    )
    print(f"wrote {len(sizes)} sites to {args.out} ({', '.join(map(str, sizes))} images)")
    print(f"wrote the held-out folder {args.out / 'heldout'}")


if __name__ == "__main__":
    main()
