"""The Hugging Face model card (`adapter/README.md`) of a run, written from its ledger.

The metadata is built with `huggingface_hub`'s `ModelCardData` and `EvalResult` (`base_model`,
`library_name`, `tags`, `co2_eq_emissions`, `model-index`), so the Hub shows the carbon and the
results; `base_model` names a loadable model (a hub id, or the local folder of a folder or of
the embedded base) and the "Use" snippet loads the adapter as written. The body says in plain
words what the privacy guarantee means, who took part, how well it does and how each energy
figure was obtained, estimates named as estimates.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from fedvlm.energy.codecarbon_adapter import Method
from fedvlm.energy.network import DEFAULT_NETWORK_KWH_PER_GB
from fedvlm.ledger_schema import (
    COORDINATOR,
    NETWORK,
    RunRecord,
    load_run,
    privacy_entries,
    summarize,
)
from fedvlm.vlm import EMBEDDED, resolve_model_path

ADAPTER_DIR = "adapter"
CARD_NAME = "README.md"
NETWORK_SOURCE = (
    "Aslan, Mayers, Koomey & France (2018), Electricity Intensity of Internet Data "
    "Transmission, Journal of Industrial Ecology 22(4):785-798"
)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _site_name(part: str, summary: dict[str, Any]) -> str:
    """An energy part: the coordinator, the network, or a site by its name (node id second)."""
    return part if part in (COORDINATOR, NETWORK) else f"site {_named(part, summary)}"


def _named(node: str, summary: dict[str, Any]) -> str:
    """A site by the name it sent, its node id second."""
    name = summary.get("site_names", {}).get(node)
    return f"{name} (node {node})" if name and name != node else node


def _method_kind(label: str) -> str:
    if label == "none":
        return "not present"
    try:
        return "estimate" if Method.from_label(label).is_estimate else "measured"
    except ValueError:
        return "unclassified"


def _privacy_words(summary: dict[str, Any]) -> list[str]:
    """The guarantee in plain words, then its numbers."""
    if not summary["privacy"]:
        return [
            "This adapter was trained **without differential privacy**. Images never left the "
            "sites, but the adapter updates they sent carry no formal guarantee: they could "
            "in principle reveal something about individual training examples."
        ]
    lines = []
    for unit, entry in sorted(summary["privacy"].items()):
        eps, delta = entry.get("epsilon"), entry.get("delta")
        who = (
            "any one training example (an image with its question and answer) at any site"
            if unit == "example"
            else "any one whole site's data"
            if unit == "site"
            else f"any one {unit}"
        )
        factor = f"e^ε ≈ {math.exp(eps):.3g}" if eps is not None and eps < 700 else "e^ε"
        lines.append(
            f"- **{unit}-level (ε = {_fmt(eps, '.3g')}, δ = {_fmt(delta, '.3g')})**: whether or "
            f"not {who} was used, the probability of any sequence of adapter updates the sites "
            f"released (and so of this adapter, and of any figure computed from the adapter "
            f"alone, such as the coordinator's held-out accuracy) changes by at most a factor "
            f"{factor}, except with probability δ."
            + (
                f" Noise multiplier {entry['noise_multiplier']}."
                if entry.get("noise_multiplier") is not None
                else ""
            )
        )
    return [*lines, "", *OUTSIDE_THE_GUARANTEE]


#: Everything else a DP run releases, stated on every DP run's card (and in the README).
OUTSIDE_THE_GUARANTEE = [
    "**Not covered by this guarantee** (released as measured, no noise): each site's number "
    "of training examples, training seconds, energy and bytes; which sites took part in each "
    "round and which refused, with the reasons; each site's validation loss and accuracy, per "
    "question type and per subgroup (computed on the sites' validation splits, which training "
    "never touches; subgroups smaller than `eval-min-subgroup` are pooled as `(suppressed)` and "
    "never scored). The training loss is not released under differential privacy, and no "
    "non-private baseline is computed or shown for this run.",
]


def loadable_base(name: str) -> str:
    """What `from_pretrained` loads for the run's base: a hub id as is, else the local folder.

    The embedded base has no hub id; its committed folder is what loads it (the same one
    `fedvlm.vlm.load_base("embedded")` reads), so the card never names "embedded".
    """
    if name == EMBEDDED or Path(name).expanduser().is_dir():
        return str(Path(resolve_model_path(name)).resolve())
    return name


def _eval_result(dataset: str, dataset_type: str, value: float, name: str) -> EvalResult:
    return EvalResult(
        task_type="visual-question-answering",
        task_name="Visual question answering",
        dataset_type=dataset_type,
        dataset_name=dataset,
        metric_type="accuracy",
        metric_value=value,
        metric_name=name,
    )


def _metadata(summary: dict[str, Any], meta: dict[str, Any]) -> ModelCardData:
    energy = summary["energy"]
    locations = "; ".join(
        f"{_site_name(part, summary)}: {source}"
        for part, source in energy["intensity_sources"].items()
    )
    methods = "; ".join(
        f"{component.upper()} {', '.join(labels) or 'none'}"
        for component, labels in energy["methods"].items()
    )
    head = summary["headline"]
    results = []
    if head["metric"] == "heldout_accuracy":
        source = head["evaluated_on"]
        results.append(
            _eval_result(
                source.get("path") or "synthetic radiograph held-out set",
                "imagefolder" if source.get("kind") == "folder" else "synthetic",
                head["final"],
                f"{head['label']} (final round)",
            )
        )
    if summary["fed_eval_accuracy_final"] is not None:
        results.append(
            _eval_result(
                "sites' validation splits",
                "federated",
                summary["fed_eval_accuracy_final"],
                "site validation accuracy (weighted mean, final round)",
            )
        )
    if summary.get("test_accuracy_final") is not None:
        results.append(
            _eval_result(
                "sites' test splits",
                "federated",
                summary["test_accuracy_final"],
                "site test accuracy (weighted mean, final round)",
            )
        )
    tags = ["federated-learning", "lora", "peft", "flower", "vision-language"]
    if summary["privacy"]:
        tags.append("differential-privacy")
    return ModelCardData(
        base_model=loadable_base(summary["base_model"]),
        library_name="peft",
        pipeline_tag="image-text-to-text",
        tags=tags,
        co2_eq_emissions={
            "emissions": energy["gco2e"],
            "source": (
                "codecarbon OfflineEmissionsTracker (process mode) at each site and the "
                f"coordinator ({methods}); network estimated from bytes sent x kWh/GB"
            ),
            "training_type": "fine-tuning",
            "geographical_location": locations or "not recorded",
            "hardware_used": meta.get("hardware") or "not recorded",
        },
        model_name=summary["run_id"] if results else None,
        eval_results=results or None,
    )


def _round_table(rows: list[dict[str, Any]], private: bool) -> list[str]:
    """The per-round table; a DP run has no train-loss column (never released under DP)."""
    loss_head, loss_rule = ("", "") if private else (" train loss |", "---:|")
    lines = [
        f"| round | sites |{loss_head} site acc. | held-out acc. | ε | kWh | gCO2e |",
        f"|---:|---:|{loss_rule}---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        energy = row.get("energy") or {}
        total = energy.get("total", {})
        eps = [e.get("epsilon") for e in privacy_entries(row) if e.get("epsilon") is not None]
        loss = "" if private else f" {_fmt(row.get('train_loss'), '.4f')} |"
        lines.append(
            f"| {row['round']} | {len(row.get('sites', []))} |{loss}"
            f" {_fmt(row.get('fed_eval_accuracy'))} | {_fmt(row.get('heldout_accuracy'))}"
            f" | {', '.join(format(e, '.3g') for e in eps) or '-'}"
            f" | {_fmt(total.get('kwh'), '.3g')} | {_fmt(total.get('gco2e'), '.3g')} |"
        )
    return lines


def _energy_section(summary: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    energy = summary["energy"]
    coefficients = energy["network_kwh_per_gb"] or [DEFAULT_NETWORK_KWH_PER_GB]
    lines = [
        f"Total: **{energy['kwh']:.4g} kWh** and **{energy['gco2e']:.4g} gCO2e** over "
        f"{energy['rounds_metered']} metered rounds.",
        "",
        "| part | kWh | gCO2e | carbon intensity from |",
        "|---|---:|---:|---|",
    ]
    for part, figures in energy["by_part"].items():
        source = (
            f"network ({', '.join(map(str, coefficients))} kWh/GB, senders' intensities)"
            if part == NETWORK
            else energy["intensity_sources"].get(part, "-")
        )
        lines.append(
            f"| {_site_name(part, summary)} | {figures['kwh']:.4g} | {figures['gco2e']:.4g} "
            f"| {source} |"
        )
    lines += ["", "How each figure was obtained:", ""]
    for component, labels in energy["methods"].items():
        for label in labels or ["none"]:
            lines.append(f"- {component.upper()}: {label} ({_method_kind(label)})")
    lines.append(
        f"- Network: estimate, bytes that crossed the wire x {', '.join(map(str, coefficients))} "
        f"kWh/GB ({NETWORK_SOURCE}; a 2015 figure, an upper estimate for today's networks)."
    )
    lines += [
        "",
        'CPU and RAM figures are per process (codecarbon `tracking_mode="process"`), so '
        "sites sharing a machine are not counted twice; RAPL and NVML read whole devices. "
        "Carbon is each site's kWh times its grid intensity.",
    ]
    if energy["fallback"]:
        lines += [
            "",
            "**Warning:** no country or intensity was configured for "
            f"{', '.join(_site_name(s, summary) for s in energy['fallback'])}; their carbon "
            "uses the world average of 475 gCO2e/kWh.",
        ]
    if meta.get("hardware"):
        lines += ["", f"Coordinator hardware: {meta['hardware']}."]
    return lines


def use_snippet(base_model: str, adapter_dir: Path) -> list[str]:
    """Python that loads the base, its processor and this adapter, runnable as written."""
    return [
        "from peft import PeftModel",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'base = AutoModelForImageTextToText.from_pretrained("{base_model}")',
        f'processor = AutoProcessor.from_pretrained("{base_model}")',
        f'model = PeftModel.from_pretrained(base, "{adapter_dir}").eval()',
    ]


# Only the adapter update is masked: the card must not let "only the sum" read as "nothing
# else" (README, "What the coordinator sees in the clear").
CLEAR_PER_SITE = [
    "**What the coordinator saw in the clear, per site.** Only the adapter update was masked. "
    "Each site's train reply also carried, unmasked: its number of training examples, train "
    "loss (withheld under DP), train seconds, bytes sent, peak GPU memory, energy (kWh and "
    "gCO2e) and its DP metrics; each evaluate reply carried its evaluation accuracy overall, "
    "per question type and per subgroup (small subgroups suppressed). The ledger keeps them "
    "per site.",
]


def _secagg_section(rows: list[dict[str, Any]]) -> list[str]:
    """The secure-aggregation parameters of the run and the threat model they hold under.

    One line per distinct set of parameters (the number of sampled sites can change between
    rounds), from the ``secagg`` block each secure round writes to the ledger.
    """
    blocks: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for row in rows:
        if block := row.get("secagg"):
            key = json.dumps(block, sort_keys=True)
            blocks.setdefault(key, (block, []))[1].append(row["round"])
    if not blocks:
        return []
    lines = [
        "## Secure aggregation",
        "",
        "The coordinator received masked updates and unmasked only their sum (SecAgg+, Bell et "
        "al. 2020). The graph degree k and threshold t were derived from the threat model "
        "stated for the run: a coordinator that tells some neighbours a site survived and "
        "others that it dropped needs 2t − k colluding neighbours of that site to open its "
        "update. Each site signed its round keys with its long-term key, certified by the "
        "federation's CA (`fedvlm credentials`), and accepted a peer's keys only under such a "
        "certificate: the coordinator could not answer for a site itself.",
        "",
        *CLEAR_PER_SITE,
        "",
    ]
    for block, rounds in blocks.values():
        trusting = (
            " **No site was assumed to collude with the coordinator** (corrupt fraction 0)."
            if block["corrupt"] == 0
            else ""
        )
        federation = block.get("federation_size", 0)  # absent from older ledgers
        of = f" of a federation of {federation} sites" if federation else ""
        lines.append(
            f"- Rounds {', '.join(map(str, rounds))}: {block['num_clients']} sites, "
            f"k = {block['degree']}, t = {block['threshold']}; assumed up to "
            f"{block['corrupt']} colluding site(s) (γ = {block['corrupt_fraction']}{of}) and "
            f"{block['dropouts']} dropout(s) (δ = {block['dropout_fraction']}); a split view "
            f"needs {block['colluders_needed']} colluding neighbours. Privacy fails with "
            f"probability ≤ {block['privacy_failure']:.3g} (goal 2^-{block['sigma']}), a round "
            f"fails for dropouts with probability ≤ {block['correctness_failure']:.3g} "
            f"(goal 2^-{block['eta']}).{trusting}"
        )
    return [*lines, ""]


def render_model_card(
    summary: dict[str, Any], rows: list[dict[str, Any]], meta: dict, adapter_dir: Path
) -> str:
    """The card's text: YAML front matter (`ModelCardData`), then the Markdown body."""
    data = _metadata(summary, meta)
    sites = summary["sites"]
    head = summary["headline"]
    worst = head["worst_site"]
    body = [
        f"# {summary['run_id']}: federated LoRA adapter for `{summary['base_model']}`",
        "",
        f"A LoRA adapter trained with federated learning (Flower) across {len(sites)} sites "
        f"for {summary['rounds']} rounds: images stayed at the sites; only adapter updates "
        "travelled.",
        "",
        "## Privacy",
        "",
        *_privacy_words(summary),
        "",
        *_secagg_section(rows),
        "## Federation",
        "",
        f"- Sites: {len(sites)} ({', '.join(_named(s, summary) for s in sites) or '-'})",
        f"- Rounds: {summary['rounds']}",
        f"- Strategy: {summary['strategy']}",
        f"- Dropped replies: {', '.join(summary['dropped']) or 'none'}; "
        f"rejected updates: {summary['rejected']}",
        f"- Bytes: {summary['bytes_down'] / 1e6:.3f} MB down, "
        f"{summary['bytes_up'] / 1e6:.3f} MB up",
        f"- Started {summary['started'] or '-'}, ended {summary['ended'] or '-'}",
        "",
        "## Evaluation",
        "",
        f"Evaluated: {head['label']}. {_fmt(head['before'])} before training, "
        f"{_fmt(head['final'])} after the last round (best {_fmt(head['best'])})"
        + (
            f"; worst site {worst.get('name', worst['node'])}: {_fmt(worst['accuracy'])}"
            if worst
            else ""
        )
        + (
            f"; sites' own validation accuracy {_fmt(summary['fed_eval_accuracy_final'])}."
            if head["metric"] == "heldout_accuracy"
            else "."
        ),
        "",
        *_round_table(rows, private=bool(summary["privacy"])),
        "",
        "## Energy and carbon",
        "",
        *_energy_section(summary, meta),
        "",
        "## Use",
        "",
        "```python",
        *use_snippet(data.base_model, adapter_dir),
        "```",
        "",
        "(`fedvlm.vlm.load_base` loads the same base with fedvlm's device and dtype choices.)",
        "",
        "Plots: `../plots/` (accuracy, privacy, cumulative energy and carbon, bytes).",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def write_model_card(run: RunRecord, summary: dict[str, Any]) -> Path:
    """Write `adapter/README.md` for a loaded run; return its path."""
    path = run.path / ADAPTER_DIR / CARD_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_model_card(summary, run.rows, run.meta, path.parent.resolve()))
    return path


def model_card(run_dir: Path) -> str:
    """Write `runs/<id>/adapter/README.md` from the ledger alone and return its text."""
    run = load_run(Path(run_dir))
    return write_model_card(run, summarize(run)).read_text()
