"""The model card every training run writes next to its weights."""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def format_model_card(
    model_name: str,
    labels: Sequence[str],
    metrics: dict,
    split_summary: dict,
    data_dir: str,
    command: str,
) -> str:
    """A short README.md for the output folder; every number comes from ``metrics`` / ``split_summary``."""
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: audio-classification",
        "tags: [speech-emotion-recognition, audio-classification]",
        "---",
        "",
        f"# Speech emotion recognition: {model_name}",
        "",
        f"Trained by `train.py` on `{data_dir}` with a {split_summary['strategy']} split. "
        f"Labels: {', '.join(labels)}.",
        "",
        f"## Held-out test split ({metrics['n']} clips)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | {metrics['accuracy']:.3f} |",
        f"| macro-F1 | {metrics['macro_f1']:.3f} |",
        f"| UAR | {metrics['uar']:.3f} |",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        row = metrics["per_class"][label]
        lines.append(f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    lines += ["", "## Split", "", "| split | clips | speakers |", "|---|---|---|"]
    for name in ("train", "eval", "test"):
        part = split_summary[name]
        speakers = ", ".join(part["speakers"][:12]) if part["speakers"] else "(clip-level)"
        if len(part["speakers"]) > 12:
            speakers += f", ... ({len(part['speakers'])} in all)"
        lines.append(f"| {name} | {part['num_clips']} | {speakers} |")
    lines += ["", "## Reproduce", "", "```bash", command, "```", ""]
    return "\n".join(lines)


