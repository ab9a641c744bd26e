"""Decode, gate and score a batch of files into result rows: the one path every engine runs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ser.audio.loader import AudioError, load_audio
from ser.batch.io import ScoredBatch
from ser.inference.predictor import EmotionClassifier
from ser.inference.quality import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    QualityConfig,
    assess_quality,
    decide,
)

# -- decoding and scoring (shared by both engines) -------------------------------------------------
#: The app's gate without its length limit: long files are scored whole here (``--max_duration_s`` refuses them).
BATCH_QUALITY_CONFIG = QualityConfig(max_duration_s=None)


@dataclass(frozen=True)
class Decoded:
    audio: np.ndarray
    quality: str  # ";"-joined problem codes, "" when usable or not checked


def decode_file(path: str, sample_rate: int, max_duration_s: float | None, quality_check: bool) -> Decoded | AudioError:
    """Decode and gate one file; the error instead of raising it, so one bad file costs one error row."""
    try:
        audio = load_audio(path, sample_rate, max_duration_s)
    except AudioError as error:
        return error
    if not quality_check:
        return Decoded(audio, "")
    return Decoded(audio, ";".join(assess_quality(audio, sample_rate, BATCH_QUALITY_CONFIG).codes))


def split_batches(paths: list[str], batch_size: int) -> Iterator[list[str]]:
    """The model batches both engines use: padding makes a clip's probabilities depend slightly on its
    batch-mates, so the same cut gives the same rows."""
    for start in range(0, len(paths), batch_size):
        yield paths[start : start + batch_size]


def decoded_batches(
    paths: list[str], sample_rate: int, batch_size: int, max_duration_s: float | None, quality_check: bool, decode_workers: int = 2
) -> Iterator[tuple[list[str], list[Decoded | AudioError]]]:
    """``(batch, decoded files)`` for each model batch (:func:`split_batches`), the next batch decoding
    in ``decode_workers`` threads while the caller runs this one through the model."""
    batches = list(split_batches(paths, max(1, batch_size)))
    with ThreadPoolExecutor(max_workers=max(1, decode_workers)) as pool:

        def submit(batch: list[str]) -> list[Future]:
            return [pool.submit(decode_file, path, sample_rate, max_duration_s, quality_check) for path in batch]

        pending = submit(batches[0]) if batches else []
        for index, batch in enumerate(batches):
            decoded = [future.result() for future in pending]
            pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
            yield batch, decoded


def result_row(path: str, probabilities: dict[str, float], quality: str, labels: Sequence[str], confidence_threshold: float) -> list:
    """One output row: path, label, confidence, uncertain, quality, then each class's probability."""
    answer = decide(probabilities, confidence_threshold)
    return [path, answer.label, answer.confidence, answer.uncertain, quality] + [answer.probabilities[label] for label in labels]


def per_clip_on_failure(
    run: Callable[[list[np.ndarray]], Sequence], items: list[tuple[str, np.ndarray]], fatal: tuple[type[Exception], ...] = ()
) -> tuple[list, list[list[str]]]:
    """``(path, run's result)`` pairs for a batch, and error rows; if the batch fails (e.g. a clip
    shorter than the model's receptive field), clip by clip, so one bad file costs one error row.
    ``fatal`` errors are about the model, not a file: they stop the run."""
    if not items:
        return [], []
    try:
        return list(zip([path for path, _ in items], run([audio for _, audio in items]))), []
    except fatal:
        raise
    except Exception as error:  # noqa: BLE001  (backends raise their own types; each clip is retried below)
        if len(items) == 1:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return [], [[items[0][0], type(error).__name__, message]]
    results, bad = [], []
    for item in items:
        found, failed = per_clip_on_failure(run, [item], fatal)
        results += found
        bad += failed
    return results, bad


def _classify(classifier: EmotionClassifier, items: list[tuple[str, np.ndarray]]) -> tuple[list, list[list[str]]]:
    return per_clip_on_failure(classifier.classify_batch, items)


def score_decoded(
    classifier: EmotionClassifier, paths: Sequence[str], decoded: Sequence[Decoded | AudioError], confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
) -> ScoredBatch:
    """Rows for decoded files (``decoded[i]`` belongs to ``paths[i]``); decode failures become error rows."""
    good = {path: item for path, item in zip(paths, decoded) if not isinstance(item, AudioError)}
    errors = [[path, type(item).__name__, str(item)] for path, item in zip(paths, decoded) if isinstance(item, AudioError)]
    predictions, unusable = _classify(classifier, [(path, item.audio) for path, item in good.items()])
    rows = [
        result_row(path, prediction.probabilities, good[path].quality, classifier.labels, confidence_threshold)
        for path, prediction in predictions
    ]
    return ScoredBatch(rows, errors + unusable)


def score_files(
    classifier: EmotionClassifier,
    paths: Sequence[str],
    max_duration_s: float | None = None,
    quality_check: bool = True,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    base_dir: str | None = None,
) -> ScoredBatch:
    """Decode, gate and score ``paths`` one after the other (a Ray worker's batch). Relative paths are
    read from ``base_dir`` (the driver's working directory) but reported as given."""
    decoded = [decode_file(os.path.join(base_dir, path) if base_dir else path, classifier.sample_rate, max_duration_s, quality_check) for path in paths]
    return score_decoded(classifier, paths, decoded, confidence_threshold)


