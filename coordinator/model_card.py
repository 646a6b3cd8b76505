"""The Hugging Face model card (`adapter/README.md`) of a run, written from its ledger.

The YAML front matter follows the Hub's model-card metadata (`base_model`, `library_name`,
`tags`, `co2_eq_emissions`, `model-index`), so the Hub shows the carbon and the results; the
body says in plain words what the privacy guarantee means, who took part, how well it does and
how each energy figure was obtained, estimates named as estimates.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from fedvlm.energy import DEFAULT_NETWORK_KWH_PER_GB, method_from_label
from fedvlm.ledger_schema import (
    COORDINATOR,
    NETWORK,
    RunRecord,
    load_run,
    privacy_entries,
    summarize,
)

ADAPTER_DIR = "adapter"
CARD_NAME = "README.md"
NETWORK_SOURCE = (
    "Aslan, Mayers, Koomey & France (2018), Electricity Intensity of Internet Data "
    "Transmission, Journal of Industrial Ecology 22(4):785-798"
)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _site_name(part: str) -> str:
    return part if part in (COORDINATOR, NETWORK) else f"site {part}"


def _method_kind(label: str) -> str:
    if label == "none":
        return "not present"
    try:
        return "estimate" if method_from_label(label).is_estimate else "measured"
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


def _metadata(summary: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    energy = summary["energy"]
    locations = "; ".join(
        f"{_site_name(part)}: {source}" for part, source in energy["intensity_sources"].items()
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
            {
                "task": {"type": "visual-question-answering", "name": "Visual question answering"},
                "dataset": {
                    "name": source.get("path") or "synthetic radiograph held-out set",
                    "type": "imagefolder" if source.get("kind") == "folder" else "synthetic",
                },
                "metrics": [
                    {
                        "type": "accuracy",
                        "value": head["final"],
                        "name": f"{head['label']} (final round)",
                    }
                ],
            }
        )
    if summary["fed_eval_accuracy_final"] is not None:
        results.append(
            {
                "task": {"type": "visual-question-answering", "name": "Visual question answering"},
                "dataset": {"name": "sites' validation splits", "type": "federated"},
                "metrics": [
                    {
                        "type": "accuracy",
                        "value": summary["fed_eval_accuracy_final"],
                        "name": "site validation accuracy (weighted mean, final round)",
                    }
                ],
            }
        )
    tags = ["federated-learning", "lora", "peft", "flower", "vision-language"]
    if summary["privacy"]:
        tags.append("differential-privacy")
    data: dict[str, Any] = {
        "base_model": summary["base_model"],
        "library_name": "peft",
        "pipeline_tag": "image-text-to-text",
        "tags": tags,
        "co2_eq_emissions": {
            "emissions": energy["gco2e"],
            "source": (
                "codecarbon OfflineEmissionsTracker (process mode) at each site and the "
                f"coordinator ({methods}); network estimated from bytes sent x kWh/GB"
            ),
            "training_type": "fine-tuning",
            "geographical_location": locations or "not recorded",
            "hardware_used": meta.get("hardware") or "not recorded",
        },
    }
    if results:
        data["model-index"] = [{"name": summary["run_id"], "results": results}]
    return data


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
            f"| {_site_name(part)} | {figures['kwh']:.4g} | {figures['gco2e']:.4g} | {source} |"
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
            f"{', '.join(_site_name(s) for s in energy['fallback'])}; their carbon uses the "
            "world average of 475 gCO2e/kWh.",
        ]
    if meta.get("hardware"):
        lines += ["", f"Coordinator hardware: {meta['hardware']}."]
    return lines


def render_model_card(summary: dict[str, Any], rows: list[dict[str, Any]], meta: dict) -> str:
    """The card's text: YAML front matter, then the Markdown body."""
    front = yaml.safe_dump(_metadata(summary, meta), sort_keys=False, allow_unicode=True)
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
        "## Federation",
        "",
        f"- Sites: {len(sites)} ({', '.join(sites) or '-'})",
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
        + (f"; worst site {worst['node']}: {_fmt(worst['accuracy'])}" if worst else "")
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
        "from peft import PeftModel",
        "from transformers import AutoModelForImageTextToText",
        "",
        f'base = AutoModelForImageTextToText.from_pretrained("{summary["base_model"]}")',
        'model = PeftModel.from_pretrained(base, "path/to/this/adapter")',
        "```",
        "",
        "Plots: `../plots/` (accuracy, privacy, cumulative energy and carbon, bytes).",
        "",
    ]
    return f"---\n{front}---\n\n" + "\n".join(body)


def write_model_card(run: RunRecord, summary: dict[str, Any]) -> Path:
    """Write `adapter/README.md` for a loaded run; return its path."""
    path = run.path / ADAPTER_DIR / CARD_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_model_card(summary, run.rows, run.meta))
    return path


def model_card(run_dir: Path) -> str:
    """Write `runs/<id>/adapter/README.md` from the ledger alone and return its text."""
    run = load_run(Path(run_dir))
    return write_model_card(run, summarize(run)).read_text()
