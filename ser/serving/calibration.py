""""Calibrate to my voice": a visitor's own standardisation statistics, from their recent clips.

A :class:`Calibration` holds only :class:`ser.core.statistics.EmbeddingStatistics` (mean, sum of
squares, count) of the utterance embeddings of the visitor's last clips, never audio or per-clip
data. It is immutable: each answered clip returns a new one, which the app keeps in that browser
session's ``gr.State`` (server memory, per session, never written to disk) or an API client sends
back with its next call (then the server keeps nothing), so no session can see another's.

Each clip is added before it is classified (as a speaker's own clips are in ``--adapt speaker``).
Below ``min_clips`` clips the answer uses the training statistics and says so; past ``capacity``
the older clips fade out (:meth:`EmbeddingStatistics.add_recent`), so the statistics follow the
current voice and room.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ser.core.statistics import EmbeddingStatistics
from ser.inference.adaptation import MIN_ADAPTATION_CLIPS, AdaptationUnsupportedError

#: The most clips a calibration counts; older ones fade out.
CALIBRATION_CAPACITY = 30


class CalibrationError(ValueError):
    """A calibration value sent by a client does not fit this model (wrong shape, malformed numbers)."""


@dataclass(frozen=True)
class Calibration:
    statistics: EmbeddingStatistics | None = None
    min_clips: int = MIN_ADAPTATION_CLIPS
    capacity: int = CALIBRATION_CAPACITY

    @property
    def clips(self) -> int:
        return 0 if self.statistics is None else self.statistics.count

    @property
    def calibrated(self) -> bool:
        return self.clips >= self.min_clips

    def add(self, embedding: np.ndarray) -> "Calibration":
        """This calibration with one more clip's utterance embedding (``embedding_shape``) counted."""
        statistics = self.statistics or EmbeddingStatistics.empty(np.shape(embedding))
        return Calibration(statistics.add_recent(np.asarray(embedding), self.capacity), self.min_clips, self.capacity)

    def cleared(self) -> "Calibration":
        """An empty calibration with the same settings (the page's reset)."""
        return Calibration(None, self.min_clips, self.capacity)

    def classify(self, classifier, waveform: np.ndarray):
        """(prediction, the calibration with this clip added): calibrated once it holds ``min_clips``
        clips (this one included), else with the training statistics."""
        if not classifier.supports_adaptation:
            raise AdaptationUnsupportedError("This model cannot be calibrated to a voice: it has no utterance embedding with swappable statistics.")
        embedding = classifier.embed_batch([waveform])
        updated = self.add(embedding[0])
        (prediction,) = classifier.classify_embeddings(embedding, [len(waveform)], updated.statistics if updated.calibrated else None)
        return prediction, updated

    def summary(self) -> dict:
        """The API's ``calibration`` field of an answer."""
        return {"calibrated": self.calibrated, "clips": self.clips, "min_clips": self.min_clips, "capacity": self.capacity}

    def describe(self) -> str:
        """One line for the page."""
        if self.calibrated:
            return f"**Calibrated to your voice** from your last {self.clips} clips."
        if self.clips == 0:
            return f"Not calibrated yet: your next {self.min_clips} clips will calibrate it."
        return (
            f"**Not calibrated yet:** {self.clips} of the {self.min_clips} clips needed, so this answer is the uncalibrated one "
            "(the training statistics)."
        )

    def to_dict(self) -> dict | None:
        """What the API returns (and takes back): the statistics only, or ``None`` when empty."""
        return None if self.statistics is None else self.statistics.to_dict()

    @classmethod
    def from_dict(cls, payload, embedding_shape: tuple[int, ...], min_clips: int = MIN_ADAPTATION_CLIPS, capacity: int = CALIBRATION_CAPACITY) -> "Calibration":
        """A client's calibration value (``None`` / ``{}``: a fresh one), checked against the model's embedding."""
        if not payload:
            return cls(None, min_clips, capacity)
        if not isinstance(payload, dict):
            raise CalibrationError("calibration must be null or the calibration object returned by the previous call.")
        try:
            statistics = EmbeddingStatistics.from_dict(payload)
        except (KeyError, TypeError, ValueError) as error:
            raise CalibrationError(f"calibration is not one this app returned ({error}); send null to start a new one.") from None
        if tuple(statistics.mean.shape) != tuple(embedding_shape):
            raise CalibrationError(
                f"calibration has shape {tuple(statistics.mean.shape)}, but this model's embedding is {tuple(embedding_shape)} "
                "(it was made with another model); send null to start a new one."
            )
        if statistics.count > capacity:
            statistics = statistics.weighted_as(capacity)
        return cls(statistics if statistics.count else None, min_clips, capacity)
