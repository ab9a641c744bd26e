"""Long recordings -> speech segments -> one emotion per segment (an emotion timeline).

Two streaming passes keep memory bounded whatever the length (a 30-minute file never sits in
memory at once):

1. decode block by block (:func:`ser.audio.loader.iter_audio_blocks`) into the Silero VAD
   (:class:`ser.inference.quality.VadStream`), keeping only per-frame speech probabilities (one float per
   32 ms) and the level / clipping sums the quality gate needs;
2. turn the probabilities into segments (pauses shorter than ``merge_gap_s`` do not split; no
   segment longer than ``max_segment_s``; shorter than ``min_segment_s`` dropped), decode again
   and cut out each segment as its blocks go by, classifying them in batches with
   ``EmotionClassifier.predict_proba``.

A long recording is one voice and one room, so with a model that can adapt
(``EmotionClassifier.supports_adaptation``) the second pass keeps each segment's embedding, and once
the recording has at least ``min_adaptation_segments`` segments they are all standardised with the
recording's own statistics instead of the training set's (``TimelineConfig.adapt``, on by default;
``Timeline.adapted`` and each segment's ``adapted`` say whether it was done).

The recording as a whole goes through the same gate as single clips (except the duration
limit): a silent, speechless or clipped recording raises :class:`ser.inference.quality.UnusableAudioError`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from ser.audio.loader import (
    DEFAULT_BLOCK_S,
    EmptyAudioError,
    iter_audio_blocks,
    resample,
)
from ser.core.statistics import EmbeddingStatistics
from ser.inference.adaptation import MAX_DOMINANT_SHARE, MIN_ADAPTATION_CLIPS, dominant_answer, dominant_phrase, too_uniform
from ser.inference.quality import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    QualityConfig,
    QualityReport,
    SpeechDetector,
    UnusableAudioError,
    decide,
    find_problems,
    get_speech_detector,
    level_dbfs,
    sum_of_squares,
)

logger = logging.getLogger(__name__)

#: ``progress(fraction or None, description)``: the UI passes ``gr.Progress`` through this.
ProgressCallback = Callable[[float | None, str], None]

#: Share of the progress bar given to the VAD pass; the rest is classification.
_VAD_SHARE = 0.5


@dataclass(frozen=True)
class TimelineConfig:
    max_segment_s: float = field(default=10.0, metadata={"help": "Longer speech is cut (at its longest pause) into pieces."})
    min_segment_s: float = field(default=0.5, metadata={"help": "Speech segments shorter than this are not classified."})
    merge_gap_s: float = field(default=0.5, metadata={"help": "Pauses shorter than this do not split a segment."})
    speech_pad_s: float = field(default=0.1, metadata={"help": "Audio kept on each side of detected speech."})
    block_s: float = field(default=DEFAULT_BLOCK_S, metadata={"help": "Seconds decoded at a time (bounds memory)."})
    batch_size: int = field(default=8, metadata={"help": "Segments per predict_proba call."})
    confidence_threshold: float = field(
        default=DEFAULT_CONFIDENCE_THRESHOLD, metadata={"help": "Segments whose top probability is below this are 'uncertain'."}
    )
    #: The recording-level gate; no duration limit (that is what the timeline is for).
    gate: QualityConfig = field(default_factory=lambda: QualityConfig(max_duration_s=None))
    refuse_unusable: bool = field(
        default=True, metadata={"help": "Raise UnusableAudioError when the recording fails the gate (else: report only)."}
    )
    adapt: bool = field(
        default=True,
        metadata={"help": "Standardise every segment with the recording's own statistics (models with an embedding only)."},
    )
    min_adaptation_segments: int = field(
        default=MIN_ADAPTATION_CLIPS, metadata={"help": "Fewest segments whose statistics replace the training set's."}
    )
    max_dominant_share: float = field(
        default=MAX_DOMINANT_SHARE,
        metadata={"help": "No adaptation when one class holds more than this share of the segments' single-segment answers (too uniform)."},
    )

    def vad_config(self) -> QualityConfig:
        return dataclasses.replace(self.gate, min_silence_s=self.merge_gap_s, speech_pad_s=self.speech_pad_s)


@dataclass(frozen=True)
class TimelineSegment:
    start_s: float
    end_s: float
    label: str
    confidence: float
    uncertain: bool
    probabilities: dict[str, float]
    #: Standardised with the recording's own statistics (else the training set's).
    adapted: bool = False

    def to_dict(self) -> dict:
        """The API shape: ``{start_s, end_s, label, confidence, uncertain, probabilities, adapted}``."""
        return {
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "label": self.label,
            "confidence": self.confidence,
            "uncertain": self.uncertain,
            "probabilities": dict(self.probabilities),
            "adapted": self.adapted,
        }


@dataclass
class Timeline:
    duration_s: float
    segments: list[TimelineSegment]
    quality: QualityReport
    confidence_threshold: float
    #: Whether the segments were standardised with the recording's own statistics, and why (not).
    adapted: bool = False
    adaptation_note: str = ""

    def records(self) -> list[dict]:
        return [segment.to_dict() for segment in self.segments]


# -- segmentation -------------------------------------------------------------------------------
def split_long_segments(segments: Iterable[tuple[float, float]], max_segment_s: float) -> list[tuple[float, float]]:
    """Cut anything longer than ``max_segment_s`` into equal pieces (the VAD already prefers pauses)."""
    result = []
    for start_s, end_s in segments:
        pieces = max(1, math.ceil((end_s - start_s) / max_segment_s - 1e-9))
        edges = np.linspace(start_s, end_s, pieces + 1)
        result.extend((float(a), float(b)) for a, b in zip(edges[:-1], edges[1:]))
    return result


def plan_segments(
    speech: Iterable[tuple[float, float]], config: TimelineConfig
) -> list[tuple[float, float]]:
    """VAD speech segments -> the segments to classify (capped, then short ones dropped)."""
    capped = split_long_segments(speech, config.max_segment_s)
    return [(start_s, end_s) for start_s, end_s in capped if end_s - start_s >= config.min_segment_s]


@dataclass
class _ScanResult:
    probabilities: np.ndarray
    num_samples: int
    sum_of_squares: float
    clipped_samples: int


def _scan(
    blocks: Iterable[np.ndarray],
    detector: SpeechDetector,
    clip_level: float,
    total_s: float | None,
    progress: ProgressCallback | None,
) -> _ScanResult:
    stream = detector.stream()
    probabilities, energy, clipped = [], 0.0, 0
    for block in blocks:
        energy += sum_of_squares(block)
        clipped += int(np.count_nonzero(np.abs(block) >= clip_level))
        probabilities.append(stream.feed(block))
        if progress is not None:
            done_s = stream.num_samples / detector.sample_rate
            fraction = _VAD_SHARE * min(1.0, done_s / total_s) if total_s else None
            progress(fraction, f"Finding speech: {done_s / 60:.1f} min scanned")
    probabilities.append(stream.finish())
    return _ScanResult(np.concatenate(probabilities), stream.num_samples, energy, clipped)


def _cut_segments(
    blocks: Iterable[np.ndarray], ranges: Sequence[tuple[int, int]]
) -> Iterator[np.ndarray]:
    """Yield the samples of each ``[start, end)`` range (sorted, non-overlapping) as the blocks pass."""
    index, position, parts = 0, 0, []
    for block in blocks:
        block_end = position + len(block)
        while index < len(ranges):
            start, end = ranges[index]
            if start >= block_end:
                break
            parts.append(block[max(start, position) - position : min(end, block_end) - position])
            if end > block_end:
                break
            yield np.concatenate(parts)
            parts, index = [], index + 1
        position = block_end
        if index >= len(ranges):
            return
    if index < len(ranges) and parts:  # a range running past the end (rounding): what is there
        yield np.concatenate(parts)


def build_timeline(
    classifier,
    open_blocks: Callable[[int], Iterable[np.ndarray]],
    total_s: float | None = None,
    config: TimelineConfig | None = None,
    progress: ProgressCallback | None = None,
    detector: SpeechDetector | None = None,
) -> Timeline:
    """The two passes over a source; ``open_blocks(sample_rate)`` returns a fresh block iterator."""
    config = config or TimelineConfig()
    detector = detector or get_speech_detector()
    scan = _scan(open_blocks(detector.sample_rate), detector, config.gate.clip_level, total_s, progress)
    if scan.num_samples == 0:
        raise EmptyAudioError("The recording holds no audio samples.")
    duration_s = scan.num_samples / detector.sample_rate
    speech = detector.segments(scan.probabilities, scan.num_samples, config.vad_config(), config.max_segment_s)
    speech_s = float(sum(end - start for start, end in speech))
    clipped_fraction = scan.clipped_samples / scan.num_samples
    rms_dbfs = level_dbfs(scan.sum_of_squares, scan.num_samples)
    report = QualityReport(
        duration_s, speech_s, clipped_fraction, rms_dbfs, speech,
        find_problems(duration_s, speech_s, clipped_fraction, rms_dbfs, config.gate),
    )
    if not report.ok and config.refuse_unusable:
        raise UnusableAudioError(report)
    planned = plan_segments(speech, config)
    logger.info(
        "Timeline: %.1f s, %.1f s of speech in %d VAD segments -> %d segments to classify",
        duration_s, speech_s, len(speech), len(planned),
    )
    rate = classifier.sample_rate
    ranges = [(int(round(start * rate)), int(round(end * rate))) for start, end in planned]
    # Adapting: keep the embeddings (a few KB per segment, never the audio), classify at the end.
    embedding = config.adapt and getattr(classifier, "supports_adaptation", False)
    rows: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        rows.extend(classifier.embed_batch(batch) if embedding else classifier.predict_proba(batch))
        batch.clear()
        if progress is not None:
            progress(_VAD_SHARE + (1 - _VAD_SHARE) * len(rows) / len(planned), f"Classified {len(rows)}/{len(planned)} segments")

    if ranges:
        for waveform in _cut_segments(open_blocks(rate), ranges):
            batch.append(waveform)
            if len(batch) == config.batch_size:
                flush()
        if batch:
            flush()
    adapted, note = False, ""
    if not config.adapt:
        note = "not adapted to the recording (turned off)"
    elif not embedding:
        note = "not adapted to the recording: this model cannot adapt"
    if embedding and rows:
        embeddings = np.stack(rows)
        single = classifier.probabilities_from_embeddings(embeddings)
        enough = len(rows) >= config.min_adaptation_segments
        uniform = enough and too_uniform(single, config.max_dominant_share)
        adapted = enough and not uniform
        probabilities = classifier.probabilities_from_embeddings(embeddings, EmbeddingStatistics.of(embeddings)) if adapted else single
        if adapted:
            note = f"adapted to this recording ({len(rows)} segments)"
        elif uniform:
            phrase = dominant_phrase(len(rows), "segments", classifier.labels, *dominant_answer(single))
            note = f"not adapted to the recording: its {phrase}, too uniform for the recording's own statistics"
        else:
            note = f"not adapted to the recording: {len(rows)} segments, at least {config.min_adaptation_segments} needed"
    else:
        probabilities = np.asarray(rows)
    segments = []
    for (start_s, end_s), row in zip(planned, probabilities):
        answer = decide(dict(zip(classifier.labels, row.tolist())), config.confidence_threshold)
        segments.append(TimelineSegment(start_s, end_s, answer.label, answer.confidence, answer.uncertain, answer.probabilities, adapted))
    return Timeline(duration_s, segments, report, config.confidence_threshold, adapted, note)


def _probe_duration_s(path: Path) -> float | None:
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return None
    return info.frames / info.samplerate if info.frames > 0 else None


def timeline_for_file(
    classifier,
    path: str | Path,
    config: TimelineConfig | None = None,
    progress: ProgressCallback | None = None,
    detector: SpeechDetector | None = None,
) -> Timeline:
    """Emotion timeline of an audio file of any length (decoded twice, block by block)."""
    config = config or TimelineConfig()
    path = Path(path)
    return build_timeline(
        classifier,
        lambda rate: iter_audio_blocks(path, rate, config.block_s),
        _probe_duration_s(path),
        config,
        progress,
        detector,
    )


def timeline_for_waveform(
    classifier,
    waveform: np.ndarray,
    sample_rate: int,
    config: TimelineConfig | None = None,
    progress: ProgressCallback | None = None,
    detector: SpeechDetector | None = None,
) -> Timeline:
    """Emotion timeline of a mono float waveform already in memory, as the loader gives it
    (:func:`ser.audio.loader.prepare_waveform`: DC offset removed; raw samples should go through it first)."""
    config = config or TimelineConfig()
    waveform = np.asarray(waveform, dtype=np.float32)

    def open_blocks(rate: int) -> Iterator[np.ndarray]:
        audio = resample(waveform, sample_rate, rate)
        step = max(1, int(config.block_s * rate))
        return (audio[start : start + step] for start in range(0, len(audio), step))

    return build_timeline(classifier, open_blocks, len(waveform) / sample_rate, config, progress, detector)


# -- presentation (UI-agnostic, so it is testable without gradio) -------------------------------
TABLE_HEADERS = ["start (s)", "end (s)", "emotion", "confidence"]


def timeline_table(timeline: Timeline) -> list[list]:
    """Rows for a table: uncertain segments read ``uncertain (top guess)``."""
    return [
        [
            round(segment.start_s, 2),
            round(segment.end_s, 2),
            f"uncertain ({segment.label})" if segment.uncertain else segment.label,
            round(segment.confidence, 3),
        ]
        for segment in timeline.segments
    ]


def timeline_figure(timeline: Timeline, labels: Sequence[str]):
    """Matplotlib figure: one row per emotion with each segment as a bar (opacity = confidence,
    hatched when uncertain), and below it each segment's confidence against the threshold."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    figure = Figure(figsize=(10, 4.2), layout="constrained")
    rows, confidence_axis = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
    colours = {label: f"C{index % 10}" for index, label in enumerate(labels)}
    row_of = {label: index for index, label in enumerate(labels)}
    for segment in timeline.segments:
        rows.broken_barh(
            [(segment.start_s, segment.end_s - segment.start_s)],
            (row_of[segment.label] - 0.4, 0.8),
            facecolors=colours[segment.label],
            alpha=0.3 + 0.7 * segment.confidence,
            hatch="//" if segment.uncertain else None,
            edgecolor="black" if segment.uncertain else colours[segment.label],
        )
        middle = (segment.start_s + segment.end_s) / 2
        confidence_axis.plot(
            [segment.start_s, segment.end_s], [segment.confidence] * 2, color=colours[segment.label], linewidth=3
        )
        confidence_axis.plot([middle], [segment.confidence], "o", color=colours[segment.label], markersize=3)
    rows.set_yticks(range(len(labels)), labels)
    rows.set_ylim(-0.6, len(labels) - 0.4)
    rows.set_title(f"Emotion per speech segment ({len(timeline.segments)} segments)")
    rows.grid(axis="x", alpha=0.3)
    rows.legend(
        handles=[Patch(facecolor="white", edgecolor="black", hatch="//", label="uncertain")], loc="upper right", fontsize=8
    )
    confidence_axis.axhline(timeline.confidence_threshold, color="grey", linestyle="--", linewidth=1)
    confidence_axis.set_ylim(0, 1)
    confidence_axis.set_ylabel("confidence")
    confidence_axis.set_xlabel("time (s)")
    confidence_axis.set_xlim(0, max(timeline.duration_s, 1e-3))
    confidence_axis.grid(alpha=0.3)
    return figure
