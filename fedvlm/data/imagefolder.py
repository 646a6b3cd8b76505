"""A real site's data: a Hugging Face ``imagefolder`` with VQA fields in ``metadata.jsonl``.

Layout: a folder of images plus ``metadata.jsonl``, one JSON object per line with

- ``file_name`` (required): image path relative to the folder, never leaving it;
- ``question``, ``answer`` (required, non-empty strings);
- ``split`` (optional): ``"train"``, ``"validation"`` (also spelled ``"val"``, as torchvision and
  many HF datasets do) or ``"test"``; if no line has it, images are split 80/20 between train and
  validation by a hash of their file name (all questions on one image land in the same split).
  A ``test`` example is never trained on: the site evaluates on it each round and reports it
  apart from validation, so a held-back test set stays untouched by model selection;
- ``question_type`` (optional): group for per-question-type accuracy;
- any other field: a string subgroup attribute (``scanner``, ``sex``, ``age_band``...).

The whole folder is checked before anything is returned, so a site never trains on half a
dataset; every problem names the file and line so an operator can fix it without a traceback.
"""

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from fedvlm.data.example import VQAExample
from fedvlm.data.site import SiteData
from fedvlm.errors import DataError

METADATA = "metadata.jsonl"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
REQUIRED_SPLITS: tuple[str, ...] = ("train", "validation")  # a site trains and validates
SPLIT_ALIASES: dict[str, str] = {"val": "validation"}  # common spellings, read as the split
REQUIRED_FIELDS: tuple[str, ...] = ("file_name", "question", "answer")
RESERVED_FIELDS: tuple[str, ...] = (*REQUIRED_FIELDS, "split", "question_type")
VALIDATION_PERCENT = 20  # share of images put in validation when no line has a split
MAX_REPORTED_PROBLEMS = 10


@dataclass
class _Row:
    """One checked metadata line."""

    line: int
    file_name: str
    question: str
    answer: str
    split: str | None
    question_type: str
    attributes: dict[str, str]


@dataclass
class _Scan:
    """Result of reading a folder: rows, problems, and (optionally) the decoded images."""

    rows: list[_Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    images: dict[str, Image.Image] = field(default_factory=dict)


def hash_split(file_name: str) -> str:
    """Deterministic split of an image that has no ``split`` field."""
    bucket = int.from_bytes(hashlib.sha256(file_name.encode()).digest()[:8], "big") % 100
    return "validation" if bucket < VALIDATION_PERCENT else "train"


def canonical_split(name: str) -> str | None:
    """The split ``name`` stands for (``"val"`` -> ``"validation"``), or None if it is none."""
    name = SPLIT_ALIASES.get(name, name)
    return name if name in SPLITS else None


def _spelled() -> str:
    """The accepted split spellings, for error messages."""
    return ", ".join((*SPLITS, *SPLIT_ALIASES))


def _parse_line(text: str, where: str, line: int) -> tuple[_Row | None, list[str]]:
    """Check one metadata line; return the row, or ``None`` with the problems found."""
    line_text = text.rstrip("\r\n")
    try:
        record = json.loads(line_text)
    except json.JSONDecodeError as err:
        if err.pos >= len(line_text.rstrip()):  # the line ended while the JSON was open
            return None, [
                f"{where}: invalid JSON (the line ends at column {len(line_text) + 1} before "
                f"the JSON value is closed: {err.msg}; one object per line)"
            ]
        return None, [f"{where}: invalid JSON ({err.msg} at column {err.colno})"]
    if not isinstance(record, dict):
        return None, [f"{where}: expected a JSON object, got {type(record).__name__}"]
    problems = []
    for key in REQUIRED_FIELDS:
        if key not in record:
            problems.append(f"{where}: missing field '{key}'")
    for key, value in record.items():
        if not isinstance(value, str):
            problems.append(f"{where}: field '{key}' must be a string, got {json.dumps(value)}")
        elif key in REQUIRED_FIELDS and not value.strip():
            problems.append(f"{where}: field '{key}' is empty")
    split = record.get("split")
    if isinstance(split, str):
        if canonical_split(split) is None:
            problems.append(f"{where}: split must be one of {_spelled()}, got '{split}'")
        split = canonical_split(split)
    if problems:
        return None, problems
    row = _Row(
        line=line,
        file_name=record["file_name"],
        question=record["question"],
        answer=record["answer"],
        split=split,
        question_type=record.get("question_type", ""),
        attributes={k: v for k, v in record.items() if k not in RESERVED_FIELDS},
    )
    return row, []


def _check_image(
    root: Path, file_name: str, where: str, keep: bool
) -> tuple[Image.Image | None, str]:
    """Open, verify and decode one image; return it (if ``keep``) or the problem found."""
    path = (root / file_name).resolve()
    if Path(file_name).is_absolute() or not path.is_relative_to(root):
        return None, f"{where}: file_name '{file_name}' is outside the data folder"
    if not path.is_file():
        return None, f"{where}: image '{file_name}' not found"
    try:
        with Image.open(path) as image:
            image.verify()  # structure and checksums
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # full decode: catches truncated pixel data
    except (OSError, SyntaxError, ValueError) as err:
        return None, f"{where}: image '{file_name}' cannot be read ({err})"
    return (rgb if keep else None), ""


def _scan(folder: str | Path, keep_images: bool, require_splits: bool = True) -> _Scan:
    """Read and check a whole imagefolder; raise ``DataError`` listing the first problems.

    ``require_splits=False`` (a held-out folder: every example is evaluated) keeps every
    per-line check but not the rule that train and validation each hold examples (``test`` is
    never required).
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    metadata = root / METADATA
    if not metadata.is_file():
        raise DataError(f"{metadata}: missing; an imagefolder needs {METADATA} next to the images")
    scan = _Scan()
    checked: dict[str, str] = {}  # file_name -> problem ("" if fine), so each image is read once
    with metadata.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            where = f"{metadata}:{number}"
            row, problems = _parse_line(text, where, number)
            if row is not None and row.file_name not in checked:
                image, problem = _check_image(root, row.file_name, where, keep_images)
                checked[row.file_name] = problem
                if image is not None:
                    scan.images[row.file_name] = image
                problems = [problem] if problem else []
            if problems:
                scan.problems.extend(problems)
            elif row is not None and not checked[row.file_name]:
                scan.rows.append(row)
    if not scan.problems:
        _assign_splits(scan, metadata, require_splits)
    if scan.problems:
        shown, tail = _most_telling(scan.problems, MAX_REPORTED_PROBLEMS)
        raise DataError(f"{len(scan.problems)} problem(s) in {root}:\n" + "\n".join(shown) + tail)
    return scan


def _kind(problem: str) -> str:
    """A problem without its file, line, names and numbers: what kind of problem it is."""
    message = re.sub(r"^.*?:\d+: ", "", problem)
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", message)


def _most_telling(problems: list[str], limit: int) -> tuple[list[str], str]:
    """One problem of each kind first, then repeats, and a count per kind of what is left.

    Why: a folder with 50 missing images and one corrupt PNG at line 51 used to show the
    first ten missing images and bury the corrupt file under "... and N more".
    """
    by_kind: dict[str, list[str]] = {}
    for problem in problems:
        by_kind.setdefault(_kind(problem), []).append(problem)
    ordered = [group[0] for group in by_kind.values()]
    ordered += [p for group in by_kind.values() for p in group[1:]]
    shown, left = ordered[:limit], ordered[limit:]
    if not left:
        return shown, ""
    counts: dict[str, int] = {}
    for problem in left:
        counts[_kind(problem)] = counts.get(_kind(problem), 0) + 1
    summary = "; ".join(f"{n} x {kind}" for kind, n in counts.items())
    return shown, f"\n... and {len(left)} more ({summary})"


def _assign_splits(scan: _Scan, metadata: Path, require_splits: bool) -> None:
    """Fill in hashed splits when no line has one; record mixed or empty splits as problems."""
    if not scan.rows:
        scan.problems.append(f"{metadata}: no examples")
        return
    with_split = [row for row in scan.rows if row.split is not None]
    if not with_split:
        for row in scan.rows:
            row.split = hash_split(row.file_name)
    elif len(with_split) < len(scan.rows):
        first = next(row for row in scan.rows if row.split is None)
        scan.problems.append(
            f"{metadata}:{first.line}: missing field 'split' (other lines have one; "
            "give every line a split or none)"
        )
        return
    sizes = Counter(row.split for row in scan.rows)
    for split in REQUIRED_SPLITS if require_splits else ():
        if not sizes[split]:
            scan.problems.append(f"{metadata}: split '{split}' has no examples")


def validate_imagefolder(path: str | Path, require_splits: bool = True) -> dict:
    """Check a site folder without keeping images, and summarise it (the "check before joining").

    ``require_splits=False`` checks a held-out folder (every example evaluated, see `_scan`).

    Returns
    -------
    dict
        ``path``, ``examples``, ``images``, ``splits`` (examples per split), ``question_types``
        (examples per type), ``attributes`` (sorted distinct values per attribute).

    Raises
    ------
    DataError
        Listing up to 10 problems, each naming the file and line.
    """
    scan = _scan(path, keep_images=False, require_splits=require_splits)
    values: dict[str, set[str]] = {}
    for row in scan.rows:
        for key, value in row.attributes.items():
            values.setdefault(key, set()).add(value)
    return {
        "path": str(Path(path).resolve()),
        "examples": len(scan.rows),
        "images": len({row.file_name for row in scan.rows}),
        "splits": {split: sum(row.split == split for row in scan.rows) for split in SPLITS},
        "question_types": dict(Counter(row.question_type or "unknown" for row in scan.rows)),
        "attributes": {key: sorted(found) for key, found in sorted(values.items())},
    }


def read_imagefolder(path: str | Path, require_splits: bool = True) -> list[tuple[str, VQAExample]]:
    """Every example of a folder checked whole, in file order, with its split.

    What a site folder, a held-out folder (``require_splits=False``) and a dataset split
    into simulated sites (fedvlm/data/partitioned.py) all read, so all three are checked
    alike, errors naming ``metadata.jsonl:<line>``.

    Raises
    ------
    DataError
        If anything in the folder is invalid; nothing is returned in that case.
    """
    scan = _scan(path, keep_images=True, require_splits=require_splits)
    return [
        (
            row.split,
            VQAExample(
                image=scan.images[row.file_name],
                question=row.question,
                answer=row.answer,
                question_type=row.question_type,
                attributes=row.attributes,
            ),
        )
        for row in scan.rows
    ]


def split_examples(rows: list[tuple[str, VQAExample]]) -> dict[str, list[VQAExample]]:
    """(split, example) pairs grouped by split, every split present (maybe empty)."""
    by_split: dict[str, list[VQAExample]] = {split: [] for split in SPLITS}
    for split, example in rows:
        by_split[split].append(example)
    return by_split


def load_imagefolder(path: str | Path) -> SiteData:
    """Load a site folder after checking all of it; images come back as RGB.

    Raises
    ------
    DataError
        If anything in the folder is invalid; nothing is returned in that case.
    """
    rows = read_imagefolder(path)
    by_split = split_examples(rows)
    root = Path(path).resolve()
    return SiteData(
        train=by_split["train"],
        val=by_split["validation"],
        test=by_split["test"],
        name=root.name,
        description={
            "path": str(root),
            "n_train": len(by_split["train"]),
            "n_val": len(by_split["validation"]),
            "n_test": len(by_split["test"]),
            "images": len({id(example.image) for _, example in rows}),
        },
    )


def write_imagefolder(examples_by_split: dict[str, list[VQAExample]], path: str | Path) -> Path:
    """Write examples as an imagefolder (PNG images + ``metadata.jsonl``) that loads back equal.

    Used by tests and to export a synthetic site as a "real" folder. Refuses a folder that
    already has metadata, so two datasets are never mixed silently.
    """
    root = Path(path)
    unknown = set(examples_by_split) - set(SPLITS)
    if unknown:
        raise ValueError(f"splits must be among {SPLITS}, got {sorted(unknown)}")
    if (root / METADATA).exists():
        raise FileExistsError(f"{root / METADATA} already exists")
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for split, examples in examples_by_split.items():
        for index, example in enumerate(examples):
            clash = set(example.attributes) & set(RESERVED_FIELDS)
            if clash:
                raise ValueError(f"attribute names {sorted(clash)} are reserved fields")
            file_name = f"images/{split}-{index:05d}.png"
            example.image.convert("RGB").save(root / file_name)
            record = {
                "file_name": file_name,
                "question": example.question,
                "answer": example.answer,
                "split": split,
            }
            if example.question_type:
                record["question_type"] = example.question_type
            record.update(example.attributes)
            lines.append(json.dumps(record))
    (root / METADATA).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
