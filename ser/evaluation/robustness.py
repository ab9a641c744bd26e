"""Accuracy under white noise at each SNR: the same clips, re-scored with noise added."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np

from ser.audio.augment import add_noise
from ser.core.metrics import macro_f1, unweighted_average_recall
from ser.data.corpus import Clip
from ser.evaluation.inference import Classifier, run_inference
from ser.evaluation.scoring import (
    open_predictions,
    present_labels,
    restricted_predictions,
)

logger = logging.getLogger(__name__)

def parse_snr_list(spec: str | Iterable[float] | None) -> list[float]:
    """``"20,10,5,0"`` -> ``[20.0, 10.0, 5.0, 0.0]``; empty: no noise runs."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        return [float(item) for item in items if str(item).strip()]
    except ValueError as error:
        raise ValueError(f"SNRs must be numbers in dB, comma-separated (e.g. '20,10,5,0'): {error}") from None


def noise_robustness(
    classifier: Classifier,
    clips: Sequence[Clip],
    snr_db: Sequence[float],
    clean_probabilities: np.ndarray,
    labels: Sequence[str],
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    adapt: str = "none",
) -> dict:
    """Accuracy with white noise added at each SNR (relative to each clip's mean power).

    The noise of clip ``i`` comes from ``default_rng([seed, i])``: the same at every run and batch size.
    ``adapt``: as the clean run; the statistics are then computed from the noisy clips.
    """
    y_true = [clip.label for clip in clips]
    present = present_labels(y_true, labels)

    def row(name: float | None, probabilities: np.ndarray) -> dict:
        open_pred = open_predictions(probabilities, labels)
        return {
            "snr_db": name,
            "n": len(y_true),
            "accuracy": float(np.mean([p == t for p, t in zip(open_pred, y_true)])),
            "macro_f1": macro_f1(y_true, open_pred, labels),
            "uar": unweighted_average_recall(y_true, open_pred, labels),
            "restricted_accuracy": float(
                np.mean([p == t for p, t in zip(restricted_predictions(probabilities, labels, present), y_true)])
            ),
        }

    rows = [row(None, clean_probabilities)]
    for snr in snr_db:
        def noisy(waveform: np.ndarray, index: int, snr: float = snr) -> np.ndarray:
            return add_noise(waveform, np.random.default_rng([seed, index]), (snr, snr))

        result = run_inference(classifier, clips, batch_size=batch_size, progress=progress, transform=noisy, adapt=adapt)
        if len(result.clips) != len(clips):
            raise RuntimeError(f"{len(clips) - len(result.clips)} clips failed with noise added at {snr:g} dB.")
        rows.append(row(float(snr), result.probabilities))
    return {"noise": "white", "seed": seed, "snr_reference": "mean power of the whole clip", "rows": rows}


