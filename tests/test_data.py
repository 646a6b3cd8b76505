"""Synthetic task, simulated sites and the imagefolder format of real sites."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from fedvlm.data import (
    ANSWERS,
    QUESTION_TYPES,
    Acquisition,
    heldout_set,
    load_imagefolder,
    make_example,
    make_examples,
    synthetic_site,
    validate_imagefolder,
    write_imagefolder,
)
from fedvlm.data.imagefolder import METADATA
from fedvlm.data.partition import site_profile
from fedvlm.data.radiograph import (
    CONTRAST_SPREAD,
    INTENSITY_SPREAD,
    NOISE_SPREAD_LOG2,
    QUESTIONS,
    Scene,
    draw_scene,
    render,
    valid_question_types,
)
from fedvlm.errors import ConfigError, DataError

# The hardest scanner a site may get: lowest contrast, highest noise, darkest.
WORST = Acquisition(
    contrast=1 - CONTRAST_SPREAD, noise=0.05 * 2**NOISE_SPREAD_LOG2, intensity=-INTENSITY_SPREAD
)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=float) / 255


def _blobs(scene: Scene, seed: int) -> tuple[int, list[int]]:
    """Count bright blobs in a worst-scanner image of ``scene``, and their areas in pixels."""
    rng = np.random.default_rng(seed)
    image = _pixels(render(scene, WORST, rng))[..., 0]
    clean = Acquisition(contrast=WORST.contrast, noise=0.0, intensity=WORST.intensity)
    anatomy = _pixels(render(Scene(()), clean, rng))[..., 0]
    smooth = ndimage.gaussian_filter(image - anatomy, 1.0)
    labels, count = ndimage.label(smooth > 0.5 * WORST.contrast * 0.6)  # half the faintest peak
    areas = [int((labels == k).sum()) for k in range(1, count + 1)]
    blobs = [area for area in areas if area >= 3]  # a lone noise pixel is not a lesion
    return len(blobs), blobs


# --- synthetic radiograph task ---------------------------------------------------------------


def test_lesions_are_visible_and_countable_at_the_worst_scanner():
    small, large = [], []
    for seed in range(120):
        scene = draw_scene(np.random.default_rng(seed), seed % 4)
        count, areas = _blobs(scene, seed)
        assert count == len(scene.lesions), f"seed {seed}: {scene}"
        if len(scene.lesions) == 1:
            (small if scene.lesions[0].size == "small" else large).append(areas[0])
    assert small and large
    assert max(small) < min(large), (small, large)  # size answer is visible, not just recorded


def test_answers_follow_the_drawn_scene():
    for seed, (n, question_type) in enumerate(itertools.product(range(4), QUESTION_TYPES)):
        if question_type not in valid_question_types(n):
            with pytest.raises(ValueError, match="not valid"):
                make_example(
                    np.random.default_rng(seed),
                    num_lesions=n,
                    question_type=question_type,
                    acquisition=Acquisition(),
                )
            continue
        example = make_example(
            np.random.default_rng(seed),
            num_lesions=n,
            question_type=question_type,
            acquisition=Acquisition(),
        )
        scene = draw_scene(np.random.default_rng(seed), n)  # make_example draws the scene first
        assert len(scene.lesions) == n
        expected = {
            "presence": "yes" if n else "no",
            "count": ("zero", "one", "two", "three")[n],
            "location": "left" if n == 1 and scene.lesions[0].x < 0.5 else "right",
            "size": scene.lesions[0].size if n == 1 else "",
        }[question_type]
        assert example.answer == expected
        assert example.question == QUESTIONS[question_type]
        assert example.answer in ANSWERS[question_type]
        assert example.image.mode == "RGB" and example.image.size == (64, 64)


def test_exact_question_strings():
    assert QUESTIONS == {
        "presence": "is there a lesion?",
        "location": "where is the lesion?",
        "count": "how many lesions are there?",
        "size": "how large is the lesion?",
    }


def test_location_answer_matches_the_brighter_half():
    for seed in range(40):
        example = make_example(
            np.random.default_rng(seed),
            num_lesions=1,
            question_type="location",
            acquisition=WORST,
        )
        grey = _pixels(example.image)[..., 0]
        left, right = grey[:, :32].max(), grey[:, 32:].max()
        assert example.answer == ("left" if left > right else "right"), seed


def test_make_examples_is_deterministic_and_uses_all_answers():
    a = make_examples(60, seed=7, image_size=32)
    b = make_examples(60, seed=7, image_size=32)
    c = make_examples(60, seed=8, image_size=32)
    assert [(e.question, e.answer) for e in a] == [(e.question, e.answer) for e in b]
    assert all(
        np.array_equal(_pixels(x.image), _pixels(y.image)) for x, y in zip(a, b, strict=True)
    )
    assert not all(
        np.array_equal(_pixels(x.image), _pixels(y.image)) for x, y in zip(a, c, strict=True)
    )
    assert {e.question_type for e in a} == set(QUESTION_TYPES)
    assert a[0].image.size == (32, 32)


def test_acquisition_changes_look_not_answers():
    bright = make_examples(20, seed=3, acquisition=Acquisition(1.4, 0.02, 0.1))
    dim = make_examples(20, seed=3, acquisition=Acquisition(0.6, 0.08, -0.1))
    assert [(e.question, e.answer) for e in bright] == [(e.question, e.answer) for e in dim]
    assert np.mean([_pixels(e.image).mean() for e in bright]) > np.mean(
        [_pixels(e.image).mean() for e in dim]
    )


def test_lesion_probs_drive_the_labels():
    only_three = make_examples(30, seed=0, lesion_probs=[0, 0, 0, 1])
    assert {e.attributes["lesion_count"] for e in only_three} == {"3"}
    assert {e.answer for e in only_three} <= {"yes", "three"}
    with pytest.raises(ValueError, match="lesion_probs"):
        make_examples(3, seed=0, lesion_probs=[0.5, 0.5])


# --- simulated sites -------------------------------------------------------------------------


def _label_probs(alpha: float, sites: int = 8, skew: float = 0.5) -> list[np.ndarray]:
    return [
        site_profile(i, label_alpha=alpha, acquisition_skew=skew, seed=0)[0] for i in range(sites)
    ]


def _mean_tv(dists: list[np.ndarray]) -> float:
    pairs = list(itertools.combinations(dists, 2))
    return float(np.mean([0.5 * np.abs(p - q).sum() for p, q in pairs]))


def test_label_skew_follows_alpha():
    assert _mean_tv(_label_probs(0.1)) > 0.6  # strong skew: sites see different labels
    assert _mean_tv(_label_probs(1000.0)) < 0.05  # near IID


def test_site_examples_follow_the_site_distribution():
    site = synthetic_site(
        1, 4, n_train=200, n_val=100, label_alpha=0.3, acquisition_skew=0.5, seed=0, image_size=16
    )
    probs = np.array([site.description[f"p_lesions_{k}"] for k in range(4)])
    for split in (site.train, site.val):
        counts = np.bincount([int(e.attributes["lesion_count"]) for e in split], minlength=4)
        assert 0.5 * np.abs(counts / counts.sum() - probs).sum() < 0.15
    assert len(site.train) == 200 and len(site.val) == 100
    assert site.name == "site-1"
    assert all(isinstance(v, str | int | float) for v in site.description.values())
    types = {e.question_type for e in site.train}
    assert types <= set(QUESTION_TYPES) and {"presence", "count"} <= types


def test_acquisition_skew_zero_means_identical_scanners():
    keys = ("contrast", "noise", "intensity")

    def scanner(site_id: int, skew: float) -> tuple:
        site = synthetic_site(
            site_id, 3, n_train=1, n_val=1, label_alpha=1.0, acquisition_skew=skew, seed=5
        )
        return tuple(site.description[k] for k in keys)

    assert {scanner(i, 0.0) for i in range(3)} == {(1.0, 0.05, 0.0)}
    skewed = [scanner(i, 1.0) for i in range(3)]
    assert len(set(skewed)) == 3
    for contrast, noise, intensity in skewed:
        assert WORST.contrast <= contrast <= 1 + CONTRAST_SPREAD
        assert 0.05 / 2**NOISE_SPREAD_LOG2 <= noise <= WORST.noise
        assert abs(intensity) <= INTENSITY_SPREAD


def test_site_is_deterministic_and_independent_of_site_count():
    kwargs = dict(n_train=6, n_val=3, label_alpha=0.5, acquisition_skew=0.5, seed=11)
    a = synthetic_site(2, 3, image_size=16, **kwargs)
    b = synthetic_site(2, 10, image_size=16, **kwargs)
    for x, y in zip(a.train + a.val, b.train + b.val, strict=True):
        assert (x.question, x.answer) == (y.question, y.answer)
        assert np.array_equal(_pixels(x.image), _pixels(y.image))


def test_heldout_is_balanced_and_disjoint_from_sites():
    held = heldout_set(40, seed=0, image_size=16)
    counts = np.bincount([int(e.attributes["lesion_count"]) for e in held], minlength=4)
    assert counts.tolist() == [10, 10, 10, 10]
    site_images = {
        e.image.tobytes()
        for i in range(4)
        for e in synthetic_site(
            i, 4, n_train=20, n_val=10, label_alpha=0.5, acquisition_skew=1.0, seed=0, image_size=16
        ).train
    }
    assert not {e.image.tobytes() for e in held} & site_images


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"label_alpha": 0.0}, "sim-label-alpha"),
        ({"acquisition_skew": 1.5}, "sim-acquisition-skew"),
        ({"acquisition_skew": -0.1}, "sim-acquisition-skew"),
        ({"n_train": 0}, "sim-examples-per-site"),
        ({"n_val": 0}, "sim-val-examples-per-site"),
        ({"site_id": 4}, "partition-id"),
        ({"num_sites": 0}, "num-partitions"),
    ],
)
def test_site_arguments_are_validated(change, key):
    kwargs = dict(
        site_id=0, num_sites=4, n_train=2, n_val=2, label_alpha=0.5, acquisition_skew=0.5, seed=0
    )
    kwargs.update(change)
    with pytest.raises(ConfigError) as info:
        synthetic_site(**kwargs)
    assert info.value.key == key and key in str(info.value)


# --- imagefolder -----------------------------------------------------------------------------


def _write_site(tmp_path: Path) -> Path:
    train = make_examples(6, seed=1, image_size=16)
    val = make_examples(3, seed=2, image_size=16)
    scanners = {"scanner": "A", "sex": "F"}
    train = [type(e)(e.image, e.question, e.answer, e.question_type, scanners) for e in train]
    return write_imagefolder({"train": train, "validation": val}, tmp_path / "site")


def test_imagefolder_round_trip(tmp_path):
    train = make_examples(6, seed=1, image_size=16)
    val = make_examples(3, seed=2, image_size=16)
    folder = write_imagefolder({"train": train, "validation": val}, tmp_path / "site")
    site = load_imagefolder(folder)
    for written, loaded in ((train, site.train), (val, site.val)):
        assert [(e.question, e.answer, e.question_type, dict(e.attributes)) for e in written] == [
            (e.question, e.answer, e.question_type, dict(e.attributes)) for e in loaded
        ]
        for w, r in zip(written, loaded, strict=True):
            assert r.image.mode == "RGB"
            assert np.array_equal(np.asarray(w.image), np.asarray(r.image))
    summary = validate_imagefolder(folder)
    assert summary["splits"] == {"train": 6, "validation": 3, "test": 0}
    assert summary["attributes"] == {
        "lesion_count": sorted({e.attributes["lesion_count"] for e in train + val})
    }
    assert sum(summary["question_types"].values()) == 9


def test_imagefolder_grayscale_and_hash_split(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    lines = []
    for i in range(30):
        Image.new("L", (8, 8), color=i).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "question": "q", "answer": "a"}))
        lines.append(json.dumps({"file_name": f"{i}.png", "question": "q2", "answer": "b"}))
    (folder / METADATA).write_text("\n".join(lines) + "\n")
    site = load_imagefolder(folder)
    again = load_imagefolder(folder)
    assert len(site.train) + len(site.val) == 60 and site.val and site.train
    assert [e.question for e in site.val] == [e.question for e in again.val]
    assert all(e.image.mode == "RGB" for e in site.train)
    # both questions on one image land in the same split
    assert len(site.val) % 2 == 0


def _break(folder: Path, line: int, record: dict | str) -> None:
    lines = (folder / METADATA).read_text().splitlines()
    lines[line - 1] = record if isinstance(record, str) else json.dumps(record)
    (folder / METADATA).write_text("\n".join(lines) + "\n")


def _first_record(folder: Path) -> dict:
    return json.loads((folder / METADATA).read_text().splitlines()[0])


def _assert_fails(folder: Path, *needles: str) -> str:
    with pytest.raises(DataError) as info:
        load_imagefolder(folder)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    with pytest.raises(DataError):
        validate_imagefolder(folder)
    return message


def test_missing_folder(tmp_path):
    _assert_fails(tmp_path / "nowhere", str(tmp_path / "nowhere"), "does not exist")


def test_missing_metadata(tmp_path):
    folder = _write_site(tmp_path)
    (folder / METADATA).unlink()
    _assert_fails(folder, str(folder / METADATA), "missing")


def test_bad_json_line(tmp_path):
    folder = _write_site(tmp_path)
    _break(folder, 3, '{"file_name": "images/train-00002.png", "question": ')
    _assert_fails(folder, f"{folder / METADATA}:3:", "invalid JSON")


def test_missing_field(tmp_path):
    folder = _write_site(tmp_path)
    record = _first_record(folder)
    del record["answer"]
    _break(folder, 2, record)
    _assert_fails(folder, f"{folder / METADATA}:2: missing field 'answer'")


def test_empty_and_non_string_fields(tmp_path):
    folder = _write_site(tmp_path)
    good = _first_record(folder)
    _break(folder, 1, {**good, "question": " "})
    _break(folder, 4, {**good, "age_band": 40})
    message = _assert_fails(
        folder,
        f"{folder / METADATA}:1: field 'question' is empty",
        f"{folder / METADATA}:4: field 'age_band' must be a string",
    )
    assert message.startswith("2 problem(s)")


def test_missing_image(tmp_path):
    folder = _write_site(tmp_path)
    (folder / "images" / "train-00004.png").unlink()
    _assert_fails(folder, f"{folder / METADATA}:5:", "'images/train-00004.png' not found")


def test_unreadable_image(tmp_path):
    folder = _write_site(tmp_path)
    (folder / "images" / "train-00001.png").write_bytes(b"not a png at all")
    _assert_fails(folder, f"{folder / METADATA}:2:", "cannot be read")


def test_truncated_image(tmp_path):
    folder = _write_site(tmp_path)
    path = folder / "images" / "validation-00000.png"
    path.write_bytes(path.read_bytes()[:60])
    _assert_fails(folder, f"{folder / METADATA}:7:", "cannot be read")


def test_path_escape(tmp_path):
    folder = _write_site(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    _break(folder, 2, {**_first_record(folder), "file_name": "../outside.png"})
    _assert_fails(folder, f"{folder / METADATA}:2:", "outside the data folder")


def test_bad_split_value(tmp_path):
    folder = _write_site(tmp_path)
    _break(folder, 1, {**_first_record(folder), "split": "holdout"})
    _assert_fails(
        folder, f"{folder / METADATA}:1:", "split must be one of train, validation, test, val"
    )


def test_val_is_validation_and_test_is_kept_apart(tmp_path):
    """``val`` reads as validation; ``test`` rows land in neither train nor validation."""
    folder = _write_site(tmp_path)
    records = [json.loads(line) for line in (folder / METADATA).read_text().splitlines()]
    records[-1]["split"] = "val"  # one of the 3 validation rows, spelled the short way
    records[0]["split"] = records[1]["split"] = "test"  # two of the 6 train rows
    (folder / METADATA).write_text("\n".join(map(json.dumps, records)) + "\n")
    site = load_imagefolder(folder)
    questions = [(r["file_name"], r["question"]) for r in records]
    assert len(site.train) == 4 and len(site.val) == 3 and len(site.test) == 2
    assert [e.question for e in site.test] == [q for _, q in questions[:2]]
    assert validate_imagefolder(folder)["splits"] == {"train": 4, "validation": 3, "test": 2}
    assert site.description["n_test"] == 2


def test_a_folder_of_only_train_and_test_still_needs_validation(tmp_path):
    folder = _write_site(tmp_path)
    records = [json.loads(line) for line in (folder / METADATA).read_text().splitlines()]
    for record in records:
        record["split"] = "test" if record["split"] == "validation" else record["split"]
    (folder / METADATA).write_text("\n".join(map(json.dumps, records)) + "\n")
    _assert_fails(folder, "split 'validation' has no examples")


def test_empty_split(tmp_path):
    folder = tmp_path / "site"
    write_imagefolder({"train": make_examples(3, seed=0, image_size=16)}, folder)
    _assert_fails(folder, f"{folder / METADATA}:", "split 'validation' has no examples")


def test_split_on_some_lines_only(tmp_path):
    folder = _write_site(tmp_path)
    record = _first_record(folder)
    del record["split"]
    _break(folder, 1, record)
    _assert_fails(folder, f"{folder / METADATA}:1: missing field 'split'")


def test_at_most_ten_problems_listed(tmp_path):
    folder = _write_site(tmp_path)
    (folder / METADATA).write_text("not json\n" * 25)
    message = _assert_fails(folder, "25 problem(s)", "... and 15 more", f"{folder / METADATA}:10:")
    assert f"{folder / METADATA}:11:" not in message


def test_a_rare_problem_is_not_buried_under_repeats_of_a_common_one(tmp_path):
    """Thirty missing images, then one corrupt PNG: the corrupt one is listed, not hidden
    in "... and N more" (before, only the first ten missing images were shown)."""
    folder = _write_site(tmp_path)
    record = _first_record(folder)
    lines = [json.dumps({**record, "file_name": f"gone-{i}.png"}) for i in range(30)]
    (folder / "corrupt.png").write_bytes(b"\x89PNG not really")
    lines.append(json.dumps({**record, "file_name": "corrupt.png"}))
    (folder / METADATA).write_text("\n".join(lines) + "\n")
    message = _assert_fails(folder, "31 problem(s)", f"{folder / METADATA}:31: image 'corrupt.png'")
    assert "... and 21 more (21 x " in message


def test_an_unclosed_json_line_names_where_the_line_ends(tmp_path):
    """`{"file_name": "a.png"` used to be reported "at column 1" (of the next line)."""
    folder = _write_site(tmp_path)
    text = json.dumps(_first_record(folder))[:-1]  # the closing brace is missing
    _break(folder, 1, text)
    _assert_fails(folder, f":1: invalid JSON (the line ends at column {len(text) + 1} before")


def test_attributes_survive_loading(tmp_path):
    site = load_imagefolder(_write_site(tmp_path))
    assert all(dict(e.attributes) == {"scanner": "A", "sex": "F"} for e in site.train)
    summary = validate_imagefolder(tmp_path / "site")
    assert summary["attributes"]["scanner"] == ["A"]
    assert summary["attributes"]["sex"] == ["F"]
