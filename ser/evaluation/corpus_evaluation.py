"""Scoring a trained model on a labelled corpus it was not trained on (evaluate_crosslingual.py).

Steps, each a function so tests can call them alone:
1. ``select_clips``: scan the class folders (``ser.data.corpus``) and map each folder onto one of the
   *model's* labels; a folder the model cannot predict is skipped and reported, never guessed.
2. ``run_inference``: batched ``predict_proba`` with the shared loader; unreadable files are listed.
3. ``score_predictions``: "open" (argmax over every model label) and "restricted" (argmax over the
   classes the corpus contains) metrics with bootstrap CIs (``ser.core.metrics``).
4. ``write_outputs``: metrics.json, predictions.csv, confusion_matrix.{csv,png}, coverage.{csv,png}, report.md.

Alongside: what the quality gate (ser.inference.quality) would refuse, by reason (clips are still scored,
never dropped silently), accuracy vs coverage for the confidence threshold, and, with
``snr_db``, accuracy under white noise at each SNR.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ser.core.labels import DEFAULT_EXCLUDED_LABELS
from ser.data.corpus import CorpusError
from ser.evaluation.inference import Classifier, run_inference
from ser.evaluation.reports import write_outputs
from ser.evaluation.robustness import noise_robustness
from ser.evaluation.scoring import (
    UNKNOWN_SPEAKER,
    open_predictions,
    per_speaker_scores,
    quality_gate_summary,
    restricted_predictions,
    score_predictions,
)
from ser.evaluation.selection import select_clips
from ser.inference.adaptation import AdaptationUnsupportedError, check_mode
from ser.inference.quality import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    QualityConfig,
    coverage_curve,
)

logger = logging.getLogger(__name__)


def evaluate_corpus(
    classifier: Classifier,
    data_dir: str | Path,
    output_dir: str | Path,
    label_map: Mapping[str, str] | None = None,
    exclude_labels: Iterable[str] = DEFAULT_EXCLUDED_LABELS,
    speakers: set[str] | None = None,
    batch_size: int = 8,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: bool = True,
    started_at: float | None = None,
    quality: QualityConfig | None = QualityConfig(),
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    snr_db: Sequence[float] = (),
    noise_seed: int = 0,
    adapt: str = "none",
) -> dict:
    """Select, score and write every output; returns the metrics.json content.

    ``quality``: the gate whose verdicts are reported (``None``: not run). ``snr_db``: also score
    with white noise at each SNR (``noise_robustness``). ``adapt``: ``none``, ``corpus`` or
    ``speaker`` (see :func:`run_inference`; recorded as ``adapt`` and ``adaptation``).

    ``started_at`` (a ``time.perf_counter()`` value) lets the caller include model loading in ``wall_time_s``.
    """
    started_at = time.perf_counter() if started_at is None else started_at
    check_mode(adapt)
    if adapt != "none" and not getattr(classifier, "supports_adaptation", False):
        raise AdaptationUnsupportedError(
            f"--adapt {adapt}: {classifier.name} has no utterance embedding with swappable statistics; only models with one "
            "(WhisperSer) can adapt. Use --adapt none."
        )
    exclude_labels = list(exclude_labels)
    labels = list(classifier.labels)
    selection = select_clips(data_dir, labels, label_map=label_map, exclude_labels=exclude_labels, speakers=speakers)
    logger.info(
        "%d clips in %d classes (%s) from %s", len(selection.clips), len(selection.label_mapping),
        ", ".join(f"{folder}->{label}" for folder, label in selection.label_mapping.items()), selection.root,
    )
    inference = run_inference(classifier, selection.clips, batch_size=batch_size, progress=progress, quality=quality, adapt=adapt)
    if not inference.clips:
        raise CorpusError(f"None of the {len(selection.clips)} clips could be read; first error: {inference.unreadable[0]['reason']}")
    y_true = [clip.label for clip in inference.clips]
    metrics = score_predictions(y_true, inference.probabilities, labels, n_resamples=n_resamples, seed=seed)
    open_pred = open_predictions(inference.probabilities, labels)
    restricted_pred = restricted_predictions(inference.probabilities, labels, metrics["restricted"]["labels"])
    metrics.update(
        model=classifier.name,
        backend=getattr(classifier, "backend", None),  # how forward ran (torch / onnx ...), when the classifier says
        data_dir=str(data_dir),
        class_root=str(selection.root),
        label_mapping=selection.label_mapping,
        per_speaker=per_speaker_scores([clip.speaker for clip in inference.clips], y_true, open_pred, restricted_pred, labels),
        speaker_counts=dict(Counter(clip.speaker or UNKNOWN_SPEAKER for clip in inference.clips)),
        speakers_filter=sorted(speakers) if speakers is not None else None,
        dropped_by_speaker_filter=selection.dropped_by_speaker_filter,
        exclude_labels=exclude_labels,
        excluded_counts=selection.excluded_counts,
        unreadable=inference.unreadable,
        skipped_folders=selection.skipped_folders,
        batch_size=batch_size,
        bootstrap_resamples=n_resamples,
        inference_s=round(inference.inference_s, 3),
        adapt=adapt,
        adaptation=inference.adaptation.to_dict() if inference.adaptation is not None else None,
    )
    correct = [predicted == true for predicted, true in zip(open_pred, y_true)]
    metrics["confidence_threshold"] = confidence_threshold
    metrics["coverage"] = coverage_curve(inference.probabilities.max(axis=1), correct)
    if inference.quality_codes is not None:
        metrics["quality_gate"] = quality_gate_summary(inference.clips, inference.quality_codes, correct, quality)
        logger.info("Quality gate would refuse %d of %d clips: %s", metrics["quality_gate"]["n_refused"],
                    len(inference.clips), metrics["quality_gate"]["by_reason"])
    if snr_db:
        metrics["noise_robustness"] = noise_robustness(
            classifier, inference.clips, snr_db, inference.probabilities, labels, batch_size, noise_seed, progress, adapt
        )
    metrics["wall_time_s"] = round(time.perf_counter() - started_at, 3)
    write_outputs(Path(output_dir), metrics, inference, labels, open_pred, restricted_pred)
    return metrics
