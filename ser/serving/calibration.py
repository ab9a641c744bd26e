""""Calibrate to my voice": a visitor's own standardisation statistics, from their recent clips.

A :class:`Calibration` holds only :class:`ser.core.statistics.EmbeddingStatistics` (mean, sum of
squares, count) of the utterance embeddings of the visitor's last clips, never audio or per-clip
data. It is immutable: each answered clip returns a new one, which the app keeps in that browser
session's ``gr.State`` (server memory, per session, never written to disk) or an API client sends
back with its next call (then the server keeps nothing), so no session can see another's.

Each clip is added before it is classified (as a speaker's own clips are in ``--adapt speaker``).
Below ``min_clips`` clips the answer uses the training statistics and says so; past ``capacity``
the older clips fade out (:meth:`EmbeddingStatistics.add_recent`), so the statistics follow the
current voice and room. The clips' uncalibrated answers are kept the same way (their mean
probabilities, fading alike): when one class dominates them (ten sad clips are no voice profile,
:func:`ser.inference.adaptation.too_uniform`), answers stay uncalibrated and the page says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ser.core.statistics import EmbeddingStatistics
from ser.inference.adaptation import (
    MAX_DOMINANT_SHARE,
    MIN_ADAPTATION_CLIPS,
    AdaptationUnsupportedError,
    dominant_answer,
    dominant_phrase,
)

#: The most clips a calibration counts; older ones fade out.
CALIBRATION_CAPACITY = 30


class CalibrationError(ValueError):
    """A calibration value sent by a client does not fit this model (wrong shape, malformed numbers)."""


@dataclass(frozen=True)
class Calibration:
    statistics: EmbeddingStatistics | None = None
    min_clips: int = MIN_ADAPTATION_CLIPS
    capacity: int = CALIBRATION_CAPACITY
    #: The clips' uncalibrated (single-clip) probabilities, as statistics: their mean is the answer mix.
    answers: EmbeddingStatistics | None = None
    max_dominant_share: float = MAX_DOMINANT_SHARE

    @property
    def clips(self) -> int:
        return 0 if self.statistics is None else self.statistics.count

    @property
    def dominant(self) -> tuple[int, float] | None:
        """(class index, share) of the class dominating the clips' uncalibrated answers; ``None`` unknown."""
        if self.answers is None or self.answers.count == 0:
            return None
        return dominant_answer(self.answers.mean[None])

    @property
    def too_uniform(self) -> bool:
        """Enough clips, but one class dominates their answers: no voice profile to calibrate to."""
        dominant = self.dominant
        return self.clips >= self.min_clips and dominant is not None and dominant[1] > self.max_dominant_share

    @property
    def calibrated(self) -> bool:
        return self.clips >= self.min_clips and not self.too_uniform

    def _settings(self) -> dict:
        return {"min_clips": self.min_clips, "capacity": self.capacity, "max_dominant_share": self.max_dominant_share}

    def add(self, embedding: np.ndarray, answer: np.ndarray | None = None) -> "Calibration":
        """This calibration with one more clip's utterance embedding (``embedding_shape``) counted, and
        its uncalibrated probabilities ``answer`` (``(labels,)``; ``None``: not known)."""
        statistics = self.statistics or EmbeddingStatistics.empty(np.shape(embedding))
        answers = self.answers
        if answer is not None:
            answers = (answers or EmbeddingStatistics.empty(np.shape(answer))).add_recent(np.asarray(answer, dtype=np.float64), self.capacity)
        return Calibration(statistics.add_recent(np.asarray(embedding), self.capacity), answers=answers, **self._settings())

    def cleared(self) -> "Calibration":
        """An empty calibration with the same settings (the page's reset)."""
        return Calibration(**self._settings())

    def standardisation(self) -> EmbeddingStatistics | None:
        """The statistics answers are standardised with: the calibration's once calibrated, else ``None``
        (the training set's)."""
        return self.statistics if self.calibrated else None

    def classify(self, classifier, waveform: np.ndarray):
        """(prediction, the calibration with this clip added): calibrated once it holds ``min_clips``
        clips (this one included) whose answers are not too uniform, else with the training statistics."""
        if not classifier.supports_adaptation:
            raise AdaptationUnsupportedError("This model cannot be calibrated to a voice: it has no utterance embedding with swappable statistics.")
        embedding = classifier.embed_batch([waveform])
        updated = self.add(embedding[0], classifier.probabilities_from_embeddings(embedding)[0])
        (prediction,) = classifier.classify_embeddings(embedding, [len(waveform)], updated.standardisation())
        return prediction, updated

    def summary(self, labels: list[str] | None = None) -> dict:
        """The API's ``calibration`` field of an answer."""
        summary = {"calibrated": self.calibrated, "clips": self.clips, "min_clips": self.min_clips, "capacity": self.capacity,
                   "answers_too_uniform": self.too_uniform}  # fmt: skip
        dominant = self.dominant
        if dominant is not None:
            summary["dominant_answer"] = {"label": labels[dominant[0]] if labels else dominant[0], "share": round(dominant[1], 4)}
        return summary

    def describe(self, labels: list[str] | None = None) -> str:
        """One line for the page."""
        if self.calibrated:
            return f"**Calibrated to your voice** from your last {self.clips} clips."
        if self.too_uniform:
            return (
                f"**Not calibrated:** your last {dominant_phrase(self.clips, 'clips', labels, *self.dominant)}, "
                "and a voice profile needs clips of several moods, so this answer is the uncalibrated one. "
                "Record a few clips in other moods (or reset) to calibrate."
            )
        if self.clips == 0:
            return f"Not calibrated yet: your next {self.min_clips} clips will calibrate it."
        return (
            f"**Not calibrated yet:** {self.clips} of the {self.min_clips} clips needed, so this answer is the uncalibrated one "
            "(the training statistics)."
        )

    def to_dict(self) -> dict | None:
        """What the API returns (and takes back): the statistics only (and the answers' mix), or ``None`` when empty."""
        if self.statistics is None:
            return None
        return self.statistics.to_dict() | ({"answers": self.answers.to_dict()} if self.answers is not None else {})

    @classmethod
    def from_dict(
        cls,
        payload,
        embedding_shape: tuple[int, ...],
        min_clips: int = MIN_ADAPTATION_CLIPS,
        capacity: int = CALIBRATION_CAPACITY,
        num_labels: int | None = None,
    ) -> "Calibration":
        """A client's calibration value (``None`` / ``{}``: a fresh one), checked against the model's embedding
        (and its ``num_labels`` classes, for the answers' mix)."""
        if not payload:
            return cls(None, min_clips, capacity)
        if not isinstance(payload, dict):
            raise CalibrationError("calibration must be null or the calibration object returned by the previous call.")
        try:
            statistics = EmbeddingStatistics.from_dict(payload)
            answers = EmbeddingStatistics.from_dict(payload["answers"]) if payload.get("answers") is not None else None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CalibrationError(f"calibration is not one this app returned ({error}); send null to start a new one.") from None
        if tuple(statistics.mean.shape) != tuple(embedding_shape):
            raise CalibrationError(
                f"calibration has shape {tuple(statistics.mean.shape)}, but this model's embedding is {tuple(embedding_shape)} "
                "(it was made with another model); send null to start a new one."
            )
        if answers is not None and (answers.mean.ndim != 1 or (num_labels is not None and answers.mean.shape[0] != num_labels)):
            raise CalibrationError(f"calibration's answers have shape {tuple(answers.mean.shape)}, not one probability per class; send null to start a new one.")
        if statistics.count > capacity:
            statistics = statistics.weighted_as(capacity)
        if answers is not None and answers.count > capacity:
            answers = answers.weighted_as(capacity)
        return cls(statistics if statistics.count else None, min_clips, capacity, answers if answers is not None and answers.count else None)
