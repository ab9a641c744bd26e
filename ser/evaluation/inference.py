"""Batched inference over the selected clips with the shared loader, the quality gate's verdicts and
(optionally) corpus- or speaker-wise adaptation; unreadable files are listed, never fatal."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ser.audio.loader import AudioError, load_audio
from ser.data.corpus import Clip
from ser.inference.adaptation import (
    AdaptationPlan,
    adapted_probabilities,
    check_mode,
    plan_for,
)
from ser.inference.quality import QualityConfig, assess_quality

logger = logging.getLogger(__name__)



class Classifier(Protocol):
    """What evaluation needs from a model (``ser.inference.predictor.EmotionClassifier`` or a future backend)."""

    name: str
    labels: list[str]
    sample_rate: int

    def predict_proba(self, waveforms: Sequence[np.ndarray]) -> np.ndarray: ...


# -- 2. inference -------------------------------------------------------------------------------
@dataclass
class InferenceResult:
    clips: list[Clip]
    probabilities: np.ndarray  # (len(clips), len(labels)), rows in ``clips`` order
    unreadable: list[dict]
    inference_s: float
    #: Per scored clip (``clips`` order): the quality gate's problem codes; ``None`` when not checked.
    quality_codes: list[list[str]] | None = None
    #: Which statistics each clip was standardised with (``None``: no adaptation asked for).
    adaptation: AdaptationPlan | None = None


def _predict_batch(
    score: Callable[[list[np.ndarray]], np.ndarray], batch: list[tuple[Clip, np.ndarray]], unreadable: list[dict]
) -> list[tuple[Clip, np.ndarray]]:
    try:
        rows = score([waveform for _, waveform in batch])
        return [(clip, row) for (clip, _), row in zip(batch, rows)]
    except AudioError:
        if len(batch) == 1:
            raise
    # One bad clip must not sink the batch: isolate it.
    scored = []
    for clip, waveform in batch:
        try:
            scored.append((clip, score([waveform])[0]))
        except AudioError as error:
            unreadable.append({"path": clip.path, "reason": f"{type(error).__name__}: {error}"})
    return scored


def run_inference(
    classifier: Classifier,
    clips: Sequence[Clip],
    batch_size: int = 8,
    progress: bool = True,
    quality: QualityConfig | None = None,
    transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
    adapt: str = "none",
) -> InferenceResult:
    """Load each clip with the shared loader and score it; long clips are windowed by the predictor.

    ``quality``: also run the quality gate on each clip (recorded, not acted on).
    ``transform(waveform, clip_index)``: applied after loading (e.g. added noise).
    ``adapt`` (``ser.inference.adaptation``): ``corpus`` / ``speaker`` embed every clip first, then classify each
    with the statistics of all clips scored / of its speaker (``clip.speaker``); no labels are used.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    check_mode(adapt)
    # Adapting: the first pass keeps embeddings (the statistics need every clip), the second classifies.
    score = classifier.embed_batch if adapt != "none" else classifier.predict_proba
    started = time.perf_counter()
    unreadable: list[dict] = []
    scored: list[tuple[Clip, np.ndarray]] = []
    batch: list[tuple[Clip, np.ndarray]] = []
    codes: dict[int, list[str]] = {}
    for index, clip in enumerate(tqdm(clips, desc="Scoring", unit="clip", disable=not progress)):
        try:
            waveform = load_audio(clip.path, classifier.sample_rate)
            if transform is not None:
                waveform = transform(waveform, index)
            if quality is not None:
                codes[id(clip)] = assess_quality(waveform, classifier.sample_rate, quality).codes
            batch.append((clip, waveform))
        except AudioError as error:
            logger.warning("Unreadable %s: %s", clip.path, error)
            unreadable.append({"path": clip.path, "reason": f"{type(error).__name__}: {error}"})
        if len(batch) == batch_size:
            scored += _predict_batch(score, batch, unreadable)
            batch = []
    if batch:
        scored += _predict_batch(score, batch, unreadable)
    plan = None
    if adapt != "none":
        embeddings = np.stack([row for _, row in scored]) if scored else np.zeros((0, *classifier.embedding_shape), np.float32)
        # (corpus, speaker): ids of different corpora in one folder (Audio Emotions) can collide.
        speakers = [f"{clip.corpus}:{clip.speaker}" if clip.speaker is not None else None for clip, _ in scored]
        plan = plan_for(classifier, embeddings, adapt, speakers)
        probabilities = adapted_probabilities(classifier, embeddings, plan)
    else:
        probabilities = np.stack([row for _, row in scored]) if scored else np.zeros((0, len(classifier.labels)))
    return InferenceResult(
        clips=[clip for clip, _ in scored],
        probabilities=probabilities,
        unreadable=unreadable,
        inference_s=time.perf_counter() - started,
        quality_codes=[codes[id(clip)] for clip, _ in scored] if quality is not None else None,
        adaptation=plan,
    )


