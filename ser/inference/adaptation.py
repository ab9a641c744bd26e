"""Adapting to a speaker, a corpus or a recording: which clips share standardisation statistics.

Most of the error on unseen voices and languages is a shift of the whole embedding distribution
(voice, language, microphone). A model with swappable statistics (``EmotionClassifier.supports_adaptation``)
can standardise a clip's embedding with statistics computed from unlabeled clips of the same
speaker or corpus instead of the training set's. This module decides, for a set of embedded clips,
which statistics each clip gets; ``ser.core.statistics`` computes them. No labels are used anywhere, but
the statistics do come from the clips being scored.

Modes (``--adapt``): ``none`` (the training statistics, as a single clip gets), ``corpus`` (one set
over every clip scored), ``speaker`` (one set per speaker; a clip with no speaker, or whose speaker
has fewer than ``min_clips`` clips, gets the corpus statistics, and those clips are counted).
Statistics from fewer than ``min_clips`` clips are never used: the clips then keep the training set's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ser.core.statistics import EmbeddingStatistics

logger = logging.getLogger(__name__)

ADAPT_MODES = ("none", "corpus", "speaker")

#: The fewest clips whose own statistics replace the training set's (speaker, corpus, recording, a
#: visitor's calibration). With fewer, the per-feature statistics are too noisy: on held-out RAVDESS
#: actors a speaker's statistics from k of their clips lose to the training statistics below k = 10 and
#: match them at 10 (``python -m scripts.adaptation_curve``; docs/evaluation.md, "Adapting to the speaker").
MIN_ADAPTATION_CLIPS = 10

#: Statistics are no voice profile when one class dominates the clips they come from: ten sad clips
#: shift the "speaker's" mean towards sad, and standardising with it then hides sadness and invents
#: the rest. Such a set is detected from the clips' own single-clip answers (no labels): when one class
#: holds more than this share of their mean probability, the clips are not adapted. Chosen on held-out
#: corpora of the bundled recipe's leave-one-corpus-out folds (``python -m scripts.calibration_uniformity``:
#: the best mean gain over one-emotion and mixed sets that still calibrates 90% of the mixed ones;
#: docs/evaluation.md, "Two heads" and what follows).
MAX_DOMINANT_SHARE = 0.60

#: Why a clip got the corpus statistics instead of its speaker's (``speaker`` mode).
NO_SPEAKER = "no_speaker"
TOO_FEW_CLIPS = "speaker_has_too_few_clips"
TOO_UNIFORM = "speaker_answers_too_uniform"


def dominant_answer(answers: np.ndarray) -> tuple[int, float]:
    """(class index, share) of the class holding most of ``answers`` ``(clips, labels)``, single-clip
    probabilities averaged over the clips."""
    mean = np.asarray(answers, dtype=np.float64).mean(axis=0)
    index = int(np.argmax(mean))
    return index, float(mean[index])


def dominant_phrase(count: int, noun: str, labels: Sequence[str] | None, index: int, share: float) -> str:
    """How a too uniform group is named to a person, the same in the app, live mode and the timeline:
    ``"10 clips mostly sound sad (80% of their answers)"``."""
    name = labels[index] if labels else f"class {index}"
    return f"{count} {noun} mostly sound {name} ({share:.0%} of their answers)"


def too_uniform(answers: np.ndarray | None, max_share: float = MAX_DOMINANT_SHARE) -> bool:
    """Whether clips with these single-clip ``answers`` are too uniform to adapt to (``None``: unknown, no)."""
    return answers is not None and len(answers) > 0 and dominant_answer(answers)[1] > max_share


class AdaptationUnsupportedError(RuntimeError):
    """The model has no utterance embedding with swappable statistics (``classify_embedding``), so it
    cannot be adapted to a speaker, a corpus or a recording (e.g. the older EmotionCnn TDNN)."""


def check_mode(mode: str) -> str:
    if mode not in ADAPT_MODES:
        raise ValueError(f"Unknown adaptation {mode!r}; choose one of: {', '.join(ADAPT_MODES)}.")
    return mode


@dataclass
class AdaptationPlan:
    """The statistics each clip is standardised with (``None``: the training set's), and what was done."""

    mode: str
    per_clip: list[EmbeddingStatistics | None]
    min_clips: int = MIN_ADAPTATION_CLIPS
    #: Speaker -> clips standardised with that speaker's own statistics (``speaker`` mode).
    speakers: dict[str, int] = field(default_factory=dict)
    #: Clips standardised with the corpus statistics instead of their speaker's, by reason.
    fallback: dict[str, int] = field(default_factory=dict)
    #: Clips left on the training statistics because even the corpus had fewer than ``min_clips`` (or its
    #: answers were too uniform, ``uniform_corpus``).
    training_statistics_clips: int = 0
    uniform_corpus: bool = False

    @property
    def fallback_clips(self) -> int:
        return sum(self.fallback.values())

    @property
    def adapted_clips(self) -> int:
        return sum(statistics is not None for statistics in self.per_clip)

    def to_dict(self) -> dict:
        """What metrics.json records under ``adaptation``."""
        return {
            "adapt": self.mode,
            "uses_labels": False,
            "sees_test_clips": self.mode != "none",
            "min_clips": self.min_clips,
            "clips": len(self.per_clip),
            "adapted_clips": self.adapted_clips,
            "speakers": dict(self.speakers),
            "fallback_to_corpus_clips": self.fallback_clips,
            "fallback_reasons": dict(self.fallback),
            "training_statistics_clips": self.training_statistics_clips,
            "corpus_answers_too_uniform": self.uniform_corpus,
        }


def plan_adaptation(
    embeddings: np.ndarray,
    mode: str,
    speakers: Sequence[str | None] | None = None,
    min_clips: int = MIN_ADAPTATION_CLIPS,
    answers: np.ndarray | None = None,
    max_dominant_share: float = MAX_DOMINANT_SHARE,
) -> AdaptationPlan:
    """Statistics per clip for ``embeddings`` ``(clips, *shape)``; ``speakers[i]`` is clip ``i``'s speaker
    (``None``: unknown), needed for ``speaker`` mode. ``answers`` ``(clips, labels)``, the clips'
    single-clip probabilities: a group whose answers are too uniform (:func:`too_uniform`) is not adapted."""
    check_mode(mode)
    count = len(embeddings)
    if mode == "none" or count == 0:
        return AdaptationPlan(mode, [None] * count, min_clips)
    if count < min_clips:
        logger.warning("Not adapting: %d clips, fewer than the %d adaptation needs; the training statistics are used.", count, min_clips)
        return AdaptationPlan(mode, [None] * count, min_clips, training_statistics_clips=count)
    if too_uniform(answers, max_dominant_share):
        logger.warning("Not adapting: one class holds %.2f of the clips' answers (over %.2f): too uniform for statistics.", dominant_answer(answers)[1], max_dominant_share)
        return AdaptationPlan(mode, [None] * count, min_clips, training_statistics_clips=count, uniform_corpus=True)
    corpus = EmbeddingStatistics.of(embeddings)
    if mode == "corpus":
        return AdaptationPlan(mode, [corpus] * count, min_clips)
    if speakers is None or len(speakers) != count:
        raise ValueError(f"speaker adaptation needs one speaker (or None) per clip: {count} clips, {0 if speakers is None else len(speakers)} speakers.")
    indices: dict[str, list[int]] = {}
    for index, speaker in enumerate(speakers):
        if speaker is not None:
            indices.setdefault(speaker, []).append(index)
    per_clip: list[EmbeddingStatistics | None] = [corpus] * count
    fallback: Counter[str] = Counter()
    fallback[NO_SPEAKER] = sum(speaker is None for speaker in speakers)
    own: dict[str, int] = {}
    for speaker, rows in indices.items():
        if len(rows) < min_clips:
            fallback[TOO_FEW_CLIPS] += len(rows)
            continue
        if too_uniform(None if answers is None else np.asarray(answers)[rows], max_dominant_share):
            fallback[TOO_UNIFORM] += len(rows)
            continue
        statistics = EmbeddingStatistics.of(embeddings[rows])
        for row in rows:
            per_clip[row] = statistics
        own[speaker] = len(rows)
    plan = AdaptationPlan(mode, per_clip, min_clips, dict(sorted(own.items())), {reason: n for reason, n in fallback.items() if n})
    if plan.fallback_clips:
        logger.info("Speaker adaptation: %d clips got the corpus statistics instead (%s)", plan.fallback_clips, plan.fallback)
    return plan


def plan_for(classifier, embeddings: np.ndarray, mode: str, speakers: Sequence[str | None] | None = None, **options) -> AdaptationPlan:
    """:func:`plan_adaptation` with ``classifier``'s single-clip answers, so too uniform groups are not adapted."""
    answers = classifier.probabilities_from_embeddings(embeddings) if mode != "none" and len(embeddings) else None
    return plan_adaptation(embeddings, mode, speakers, answers=answers, **options)


def adapted_probabilities(classifier, embeddings: np.ndarray, plan: AdaptationPlan) -> np.ndarray:
    """Probabilities ``(clips, labels)``: each group of clips that shares statistics classified with them."""
    probabilities = np.zeros((len(embeddings), len(classifier.labels)), dtype=np.float64)
    groups: dict[int, list[int]] = {}
    for index, statistics in enumerate(plan.per_clip):
        groups.setdefault(id(statistics), []).append(index)
    for rows in groups.values():
        probabilities[rows] = classifier.probabilities_from_embeddings(embeddings[rows], plan.per_clip[rows[0]])
    return probabilities
