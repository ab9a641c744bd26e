"""The local batch engine: this process, the next batch decoding in threads while the model runs."""

from __future__ import annotations

from pathlib import Path

from ser.batch.io import ResultWriter
from ser.batch.scoring import decoded_batches, score_decoded
from ser.inference.predictor import EmotionClassifier
from ser.inference.quality import DEFAULT_CONFIDENCE_THRESHOLD


def predict_files(
    classifier: EmotionClassifier,
    paths: list[str],
    output: Path,
    errors_output: Path,
    batch_size: int = 16,
    max_duration_s: float | None = None,
    decode_workers: int = 2,
    progress: bool = True,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    quality_check: bool = True,
) -> tuple[int, int, int]:
    """Classify ``paths`` into ``output`` (resuming) in this process; returns (written, skipped as done, failed)."""
    from tqdm.auto import tqdm

    results = ResultWriter(output, errors_output, classifier.labels)
    todo, skipped = results.pending(paths)
    try:
        with tqdm(total=len(todo), unit="file", disable=not progress, desc="Classifying") as bar:
            for batch, decoded in decoded_batches(todo, classifier.sample_rate, batch_size, max_duration_s, quality_check, decode_workers):
                results.write(score_decoded(classifier, batch, decoded, confidence_threshold))
                bar.update(len(batch))
    finally:
        results.close()
    return results.written, skipped, results.failed


