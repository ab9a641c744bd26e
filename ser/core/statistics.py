"""Statistics of utterance embeddings: the one place that standardisation statistics come from.

A model standardises its utterance embedding with the training set's mean and variance. The same
small object, computed from unlabeled clips, can stand in for them: one speaker's clips, one
corpus's, a visitor's recent recordings. It is serialisable (plain lists) and merges incrementally
(Chan et al.'s pairwise update), so it can be built clip by clip without keeping any audio.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EmbeddingStatistics:
    """Mean and sum of squared deviations of ``count`` embeddings of one shape."""

    mean: np.ndarray
    sum_squares: np.ndarray
    count: int

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> "EmbeddingStatistics":
        return cls(np.zeros(shape, np.float64), np.zeros(shape, np.float64), 0)

    @classmethod
    def of(cls, embeddings: np.ndarray) -> "EmbeddingStatistics":
        """Statistics of a stack ``(clips, *shape)``."""
        embeddings = np.asarray(embeddings, dtype=np.float64)
        if embeddings.ndim < 1 or embeddings.shape[0] == 0:
            raise ValueError("EmbeddingStatistics.of needs at least one embedding.")
        mean = embeddings.mean(axis=0)
        return cls(mean, np.square(embeddings - mean).sum(axis=0), int(embeddings.shape[0]))

    def merge(self, other: "EmbeddingStatistics") -> "EmbeddingStatistics":
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"Cannot merge statistics of shapes {self.mean.shape} and {other.mean.shape}.")
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        sum_squares = self.sum_squares + other.sum_squares + np.square(delta) * (self.count * other.count / count)
        return EmbeddingStatistics(mean, sum_squares, count)

    def add(self, embedding: np.ndarray) -> "EmbeddingStatistics":
        """These statistics with one more embedding (shape ``self.mean.shape``)."""
        return self.merge(EmbeddingStatistics.of(np.asarray(embedding)[None]))

    def weighted_as(self, count: int) -> "EmbeddingStatistics":
        """The same mean and variance, counted as ``count`` clips (fewer: older clips weigh less
        against the ones added next)."""
        if count < 1 or self.count == 0:
            raise ValueError(f"weighted_as needs count >= 1 and non-empty statistics, got count={count} of {self.count} clips.")
        return EmbeddingStatistics(self.mean, self.sum_squares * (count / self.count), count)

    def add_recent(self, embedding: np.ndarray, capacity: int) -> "EmbeddingStatistics":
        """:meth:`add`, but counting at most ``capacity`` clips: once full, the earlier clips are first
        weighted as ``capacity - 1``, so the statistics follow the most recent ones (an exponential
        forgetting that keeps no per-clip data)."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}.")
        if capacity == 1:
            return EmbeddingStatistics.empty(self.mean.shape).add(embedding)
        current = self.weighted_as(capacity - 1) if self.count >= capacity else self
        return current.add(embedding)

    @property
    def variance(self) -> np.ndarray:
        """Population variance (what a standard scaler divides by)."""
        return self.sum_squares / max(self.count, 1)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "sum_squares": self.sum_squares.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, payload: dict) -> "EmbeddingStatistics":
        mean = np.asarray(payload["mean"], dtype=np.float64)
        sum_squares = np.asarray(payload["sum_squares"], dtype=np.float64)
        count = int(payload["count"])
        if mean.shape != sum_squares.shape or count < 0:
            raise ValueError("Malformed statistics: mean and sum_squares must have one shape and count must be >= 0.")
        # They may come from a client (the app's calibration input): refuse what would poison the scaling.
        if not (np.isfinite(mean).all() and np.isfinite(sum_squares).all()) or (sum_squares < 0).any():
            raise ValueError("Malformed statistics: mean and sum_squares must be finite and sum_squares >= 0.")
        return cls(mean, sum_squares, count)


def merge_all(statistics: Iterable[EmbeddingStatistics]) -> EmbeddingStatistics:
    items = list(statistics)
    if not items:
        raise ValueError("merge_all needs at least one EmbeddingStatistics.")
    merged = items[0]
    for item in items[1:]:
        merged = merged.merge(item)
    return merged
