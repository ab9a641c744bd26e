"""Classification metrics from scikit-learn, with a fixed label order.

``evaluate.load(...)`` needs the hub, so everything here is plain scikit-learn. Macro-F1 and UAR
(mean per-class recall) average over the classes that occur in ``y_true``: a model label that a
corpus lacks (e.g. "neutral" on AESDD) counts against accuracy through the wrong answers it draws,
but is not itself averaged in as a 0.0 class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
)


def _present(y_true: Sequence[str], labels: Sequence[str]) -> list[str]:
    present = set(y_true)
    return [label for label in labels if label in present]


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> float:
    return float(f1_score(y_true, y_pred, labels=_present(y_true, labels), average="macro", zero_division=0))


def unweighted_average_recall(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> float:
    return float(recall_score(y_true, y_pred, labels=_present(y_true, labels), average="macro", zero_division=0))


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """accuracy, macro_f1, uar, n, labels, confusion_matrix (rows = true, in ``labels`` order), per_class."""
    labels = list(labels)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions.")
    if not y_true:
        raise ValueError("No predictions to score.")
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": macro_f1(y_true, y_pred, labels),
        "uar": unweighted_average_recall(y_true, y_pred, labels),
        "n": len(y_true),
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": {
            label: {
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "support": int(support[index]),
            }
            for index, label in enumerate(labels)
        },
    }


def bootstrap_ci(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals (resampling clips) for accuracy and macro-F1.

    Each resample's scores come from its confusion matrix (one ``bincount``), which gives the same
    numbers as :func:`macro_f1` at a small fraction of the cost of calling scikit-learn each time.
    """
    labels = list(labels)
    index_of = {label: index for index, label in enumerate(labels)}
    true = np.array([index_of[label] for label in y_true])
    pred = np.array([index_of.get(label, -1) for label in y_pred])
    if np.any(pred < 0):
        raise ValueError(f"Predictions outside labels {labels}: {sorted(set(y_pred) - set(labels))}")
    num_labels = len(labels)
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(true), size=(n_resamples, len(true)))
    cells = true[samples] * num_labels + pred[samples]
    offsets = np.arange(n_resamples)[:, None] * num_labels * num_labels
    confusion = np.bincount((cells + offsets).ravel(), minlength=n_resamples * num_labels * num_labels)
    confusion = confusion.reshape(n_resamples, num_labels, num_labels).astype(np.float64)
    correct = np.einsum("rii->ri", confusion)
    accuracies = correct.sum(axis=1) / len(true)
    support = confusion.sum(axis=2)
    predicted = confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(support + predicted > 0, 2 * correct / (support + predicted), 0.0)
    # Average over the classes present in each resample, as macro_f1 does.
    present = support > 0
    f1s = (f1 * present).sum(axis=1) / present.sum(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    return {
        "accuracy": [float(np.percentile(accuracies, tail)), float(np.percentile(accuracies, 100.0 - tail))],
        "macro_f1": [float(np.percentile(f1s, tail)), float(np.percentile(f1s, 100.0 - tail))],
    }
