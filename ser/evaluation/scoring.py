"""Scores: "open" (argmax over every model label) and "restricted" (over the corpus's classes) metrics
with bootstrap CIs, per speaker, and what the quality gate would refuse."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from ser.core.metrics import (
    bootstrap_ci,
    classification_metrics,
    unweighted_average_recall,
)
from ser.data.corpus import Clip
from ser.inference.quality import QualityConfig

logger = logging.getLogger(__name__)

#: Name used in per-speaker tables for files whose name encodes no known speaker.
UNKNOWN_SPEAKER = "unknown"

# -- 3. scoring ---------------------------------------------------------------------------------
def present_labels(y_true: Sequence[str], labels: Sequence[str]) -> list[str]:
    """The model labels that occur in ``y_true``, in model order."""
    present = set(y_true)
    return [label for label in labels if label in present]


def open_predictions(probabilities: np.ndarray, labels: Sequence[str]) -> list[str]:
    return [labels[index] for index in np.argmax(probabilities, axis=1)]


def restricted_predictions(probabilities: np.ndarray, labels: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """Argmax over the ``allowed`` columns only (the classes the corpus has)."""
    columns = [list(labels).index(label) for label in allowed]
    return [allowed[index] for index in np.argmax(probabilities[:, columns], axis=1)]


def _scores(y_true: list[str], y_pred: list[str], labels: list[str], n_resamples: int, seed: int) -> dict:
    metrics = classification_metrics(y_true, y_pred, labels)
    metrics["ci95"] = bootstrap_ci(y_true, y_pred, labels, n_resamples=n_resamples, seed=seed)
    return metrics


def score_predictions(
    y_true: Sequence[str],
    probabilities: np.ndarray,
    labels: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Open metrics at the top level (labels = all model labels) and ``restricted`` (present classes)."""
    y_true, labels = list(y_true), list(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(y_true), len(labels)):
        raise ValueError(f"Probabilities of shape {probabilities.shape}, expected {(len(y_true), len(labels))}.")
    unknown = sorted(set(y_true) - set(labels))
    if unknown:
        raise ValueError(f"True labels {unknown} are not model labels {labels}.")
    present = present_labels(y_true, labels)
    metrics = _scores(y_true, open_predictions(probabilities, labels), labels, n_resamples, seed)
    metrics["restricted"] = _scores(y_true, restricted_predictions(probabilities, labels, present), present, n_resamples, seed)
    return metrics


def per_speaker_scores(
    speakers: Sequence[str | None],
    y_true: Sequence[str],
    open_pred: Sequence[str],
    restricted_pred: Sequence[str],
    labels: Sequence[str],
) -> dict[str, dict]:
    """Accuracy (open and restricted) and UAR for each speaker, speakers in natural order."""
    rows: dict[str, list[int]] = defaultdict(list)
    for index, speaker in enumerate(speakers):
        rows[speaker or UNKNOWN_SPEAKER].append(index)

    def order(speaker: str) -> tuple[int, int | str]:
        return (0, int(speaker)) if speaker.isdigit() else (1, speaker)

    result = {}
    for speaker in sorted(rows, key=order):
        index = rows[speaker]
        true = [y_true[i] for i in index]
        result[speaker] = {
            "n": len(index),
            "accuracy": float(np.mean([open_pred[i] == y_true[i] for i in index])),
            "restricted_accuracy": float(np.mean([restricted_pred[i] == y_true[i] for i in index])),
            "uar": unweighted_average_recall(true, [open_pred[i] for i in index], labels),
        }
    return result


def quality_gate_summary(
    clips: Sequence[Clip], codes: Sequence[Sequence[str]], correct: Sequence[bool], config: QualityConfig
) -> dict:
    """How many scored clips the gate would refuse, by reason, and the accuracy on each side."""
    by_reason = Counter(code for clip_codes in codes for code in clip_codes)
    refused = [index for index, clip_codes in enumerate(codes) if clip_codes]
    passed = [index for index, clip_codes in enumerate(codes) if not clip_codes]

    def accuracy(index: list[int]) -> float | None:
        return float(np.mean([correct[i] for i in index])) if index else None

    return {
        "config": asdict(config),
        "n_checked": len(codes),
        "n_passed": len(passed),
        "n_refused": len(refused),
        "by_reason": dict(sorted(by_reason.items())),
        "accuracy_passed": accuracy(passed),
        "accuracy_refused": accuracy(refused),
        "refused": [{"path": clips[i].path, "codes": list(codes[i])} for i in refused],
    }


