"""Audio the model can trust: a quality gate in front of the classifier, and the confidence rule after it.

A classifier answers something for anything (silence, a door slam, a clipped phone call), so every
path (app, API, evaluation, batch) runs the same gate first:

* ``assess_quality(waveform, sample_rate, config) -> QualityReport``: duration, speech found by a
  real voice activity detector (Silero VAD, the ONNX "sequence" model shipped inside the
  ``silero-vad`` wheel; offline, loaded once), level, clipping, and a list of problems, each with
  a stable ``code`` and a user-facing message saying what was found and what is accepted.
* ``check_quality(...)`` raises :class:`UnusableAudioError` (an :class:`ser.audio.loader.AudioError`, so
  existing ``except AudioError`` edges already turn it into a user message) carrying the report.
* ``decide(probabilities, threshold) -> Answer``: the top emotion, flagged ``uncertain`` when its
  probability is below the threshold (``confidence >= threshold`` is certain: the boundary counts
  as certain). ``coverage_curve`` measures what a threshold costs (coverage) and buys (accuracy).
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ser.audio.loader import TARGET_SAMPLE_RATE, AudioError, resample

logger = logging.getLogger(__name__)

#: Top probability below this -> "uncertain". The rule: the highest threshold (0.05 grid) at which
#: the bundled model still answers at least half of RAVDESS actors 21-24, read from its
#: accuracy-vs-coverage curve (models/ser-multicorpus/eval/*/coverage.csv; docs/evaluation.md, "Audio the model
#: can trust"). tests/test_bundled_model.py re-derives it, so a retrained model cannot leave it stale.
DEFAULT_CONFIDENCE_THRESHOLD = 0.90
MIN_ANSWERED_FRACTION = 0.5

#: Level floor for digital silence, so an all-zero clip reports a finite dBFS.
_DBFS_FLOOR = -120.0


class ProblemCode(str, enum.Enum):
    """Stable machine-readable reasons; the API and metrics.json use the string values."""

    TOO_SHORT = "too_short"
    SILENT = "silent"
    NO_SPEECH = "no_speech"
    CLIPPED = "clipped"
    TOO_LONG = "too_long"


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the gate. ``None`` disables the duration limit (used for long-recording timelines)."""

    min_speech_s: float = field(default=0.5, metadata={"help": "Least speech (as found by the VAD) the model is asked about."})
    silence_dbfs: float = field(
        default=-60.0, metadata={"help": "Clips below this RMS level, with too little speech found, are 'silent'."}
    )
    max_clipped_fraction: float = field(default=0.01, metadata={"help": "Largest accepted share of samples at full scale."})
    clip_level: float = field(default=0.999, metadata={"help": "|sample| at or above this (full scale = 1) counts as clipped."})
    max_duration_s: float | None = field(default=60.0, metadata={"help": "Longest clip given a single answer (longer: use the timeline)."})
    vad_threshold: float = field(default=0.5, metadata={"help": "Silero VAD speech probability above which a frame is speech."})
    min_silence_s: float = field(default=0.1, metadata={"help": "Pauses shorter than this do not split speech segments."})
    speech_pad_s: float = field(default=0.03, metadata={"help": "Padding added around each detected speech segment."})


@dataclass(frozen=True)
class QualityProblem:
    code: ProblemCode
    message: str

    def to_dict(self) -> dict:
        return {"code": self.code.value, "message": self.message}


@dataclass
class QualityReport:
    """What the gate measured. ``speech_s`` is ``None`` when the VAD was not run (clip too long)."""

    duration_s: float
    speech_s: float | None
    clipped_fraction: float
    rms_dbfs: float
    speech_segments: list[tuple[float, float]]
    problems: list[QualityProblem]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def codes(self) -> list[str]:
        return [problem.code.value for problem in self.problems]

    @property
    def message(self) -> str:
        return " ".join(problem.message for problem in self.problems)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["speech_segments"] = [list(segment) for segment in self.speech_segments]
        data["problems"] = [problem.to_dict() for problem in self.problems]
        data["ok"] = self.ok
        return data


class UnusableAudioError(AudioError):
    """The audio failed the quality gate; ``report`` says what was measured and why."""

    def __init__(self, report: QualityReport):
        super().__init__(report.message)
        self.report = report


# -- voice activity detection -------------------------------------------------------------------
class SpeechDetector:
    """Silero VAD (the batched "sequence" ONNX model): per-32 ms-frame speech probabilities.

    Stateless between calls (the LSTM state is passed explicitly), so one instance serves every
    thread; ONNX Runtime sessions are thread-safe. Use :func:`get_speech_detector` for the shared one.
    """

    def __init__(self):
        import torch

        threads = torch.get_num_threads()
        try:
            # Importing silero_vad calls torch.set_num_threads(1) as a side effect, which would slow
            # the emotion model down to one core; the VAD itself runs in onnxruntime.
            from silero_vad import load_silero_vad
            from silero_vad.sequence_vad import RATE_CONFIG, STATE_SHAPE

            with warnings.catch_warnings():  # silero's own importlib.resources deprecation notice
                warnings.simplefilter("ignore", DeprecationWarning)
                model = load_silero_vad(sequence=True)
        finally:
            torch.set_num_threads(threads)
        if TARGET_SAMPLE_RATE not in RATE_CONFIG:
            raise RuntimeError(f"Silero VAD supports {sorted(RATE_CONFIG)} Hz, not {TARGET_SAMPLE_RATE} Hz.")
        self.sample_rate = TARGET_SAMPLE_RATE
        self.frame_samples, self.context_samples = RATE_CONFIG[self.sample_rate]
        self._state_shape = (1, 1, STATE_SHAPE[-1])
        self._session = model.session
        self._max_frames = model.max_frames

    @property
    def frame_s(self) -> float:
        return self.frame_samples / self.sample_rate

    def stream(self) -> "VadStream":
        """A fresh stream: feed blocks of any length in order, then ``finish``."""
        return VadStream(self)

    def speech_probabilities(self, waveform: np.ndarray) -> np.ndarray:
        """One probability per frame of a whole waveform at :attr:`sample_rate`."""
        stream = self.stream()
        return np.concatenate([stream.feed(waveform), stream.finish()])

    def _run(self, frames: np.ndarray, state: tuple[np.ndarray, np.ndarray, np.ndarray]):
        """Frames ``(n, frame_samples)`` -> (probabilities, new state); state = (hidden, cell, context)."""
        hidden, cell, context = state
        outputs = []
        for first in range(0, len(frames), self._max_frames):
            block = frames[first : first + self._max_frames]
            contexts = np.empty((len(block), self.context_samples), dtype=np.float32)
            contexts[0] = context
            contexts[1:] = block[:-1, -self.context_samples :]
            context = block[-1, -self.context_samples :].copy()
            values, hidden, cell = self._session.run(
                ["speech_probs", "hn", "cn"],
                {"input": np.concatenate([contexts, block], axis=1), "h": hidden, "c": cell},
            )
            outputs.append(np.asarray(values, dtype=np.float32).reshape(-1))
        return np.concatenate(outputs), (hidden, cell, context)

    def segments(
        self, probabilities: np.ndarray, num_samples: int, config: QualityConfig, max_segment_s: float | None = None
    ) -> list[tuple[float, float]]:
        """Frame probabilities -> speech segments ``(start_s, end_s)`` (silero's own state machine)."""
        from silero_vad import get_speech_timestamps_from_probs

        if len(probabilities) == 0:
            return []
        stamps = get_speech_timestamps_from_probs(
            probabilities.tolist(),
            sampling_rate=self.sample_rate,
            threshold=config.vad_threshold,
            # silero's default: bursts under 250 ms (clicks, a cough) are not speech.
            min_speech_duration_ms=250,
            max_speech_duration_s=float("inf") if max_segment_s is None else max_segment_s,
            min_silence_duration_ms=int(round(config.min_silence_s * 1000)),
            speech_pad_ms=int(round(config.speech_pad_s * 1000)),
            audio_length_samples=num_samples,
        )
        return [(stamp["start"] / self.sample_rate, stamp["end"] / self.sample_rate) for stamp in stamps]


class VadStream:
    """Incremental VAD over a long recording: memory is one block, whatever the length."""

    def __init__(self, detector: SpeechDetector):
        self._detector = detector
        zeros = np.zeros(detector._state_shape, dtype=np.float32)
        self._state = (zeros, zeros.copy(), np.zeros(detector.context_samples, dtype=np.float32))
        self._pending = np.zeros(0, dtype=np.float32)
        self.num_samples = 0

    def feed(self, block: np.ndarray) -> np.ndarray:
        """Probabilities of the whole frames completed by ``block`` (possibly none)."""
        block = np.asarray(block, dtype=np.float32)
        self.num_samples += len(block)
        samples = np.concatenate([self._pending, block]) if len(self._pending) else block
        frame = self._detector.frame_samples
        whole = len(samples) // frame * frame
        self._pending = samples[whole:].copy()
        if whole == 0:
            return np.zeros(0, dtype=np.float32)
        probabilities, self._state = self._detector._run(samples[:whole].reshape(-1, frame), self._state)
        return probabilities

    def finish(self) -> np.ndarray:
        """The last, zero-padded partial frame (as silero does)."""
        if len(self._pending) == 0:
            return np.zeros(0, dtype=np.float32)
        frame = np.zeros((1, self._detector.frame_samples), dtype=np.float32)
        frame[0, : len(self._pending)] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        probabilities, self._state = self._detector._run(frame, self._state)
        return probabilities


_detector_lock = threading.Lock()


@functools.cache
def _cached_detector() -> SpeechDetector:
    detector = SpeechDetector()
    logger.info("Loaded Silero VAD (sequence ONNX model)")
    return detector


def get_speech_detector() -> SpeechDetector:
    """The process-wide VAD, loaded on first use (about 0.1 s) and then reused."""
    with _detector_lock:
        return _cached_detector()


# -- the gate -----------------------------------------------------------------------------------
def sum_of_squares(samples: np.ndarray) -> float:
    """``sum(x**2)`` in float64 without BLAS: ``np.dot`` would wake numpy's OpenBLAS thread pool,
    whose threads then spin on the other cores while the model runs right after (that doubled the
    app's model time on a 2-core machine; benchmarks/model_time.py)."""
    return float(np.square(samples, dtype=np.float64).sum())


def level_dbfs(sum_of_squares: float, num_samples: int) -> float:
    """RMS level in dB relative to full scale (1.0), floored so silence stays finite."""
    if num_samples == 0 or sum_of_squares <= 0:
        return _DBFS_FLOOR
    return max(_DBFS_FLOOR, 10.0 * float(np.log10(sum_of_squares / num_samples)))


def find_problems(
    duration_s: float,
    speech_s: float | None,
    clipped_fraction: float,
    rms_dbfs: float,
    config: QualityConfig,
) -> list[QualityProblem]:
    """The gate's rules, shared by whole clips (:func:`assess_quality`) and streamed recordings."""
    problems: list[QualityProblem] = []
    need = f"at least {config.min_speech_s:g} s of speech is needed"
    if config.max_duration_s is not None and duration_s > config.max_duration_s:
        problems.append(
            QualityProblem(
                ProblemCode.TOO_LONG,
                f"The recording is {duration_s:.1f} s long; one answer is given for at most {config.max_duration_s:g} s. "
                "Use the timeline for longer recordings, or trim the clip.",
            )
        )
    if duration_s < config.min_speech_s:
        problems.append(QualityProblem(ProblemCode.TOO_SHORT, f"The clip is only {duration_s:.2f} s long; {need}."))
    enough_speech = speech_s is not None and speech_s >= config.min_speech_s
    # Quiet speech the VAD still hears is accepted (RAVDESS has sad clips near -62 dBFS).
    if rms_dbfs < config.silence_dbfs and not enough_speech:
        problems.append(
            QualityProblem(
                ProblemCode.SILENT,
                f"The clip is silent (level {rms_dbfs:.0f} dBFS, below {config.silence_dbfs:g} dBFS). "
                f"Check the microphone; {need}.",
            )
        )
    elif speech_s is not None and duration_s >= config.min_speech_s:
        if speech_s == 0:
            problems.append(
                QualityProblem(
                    ProblemCode.NO_SPEECH,
                    f"No speech was detected in {duration_s:.1f} s of audio (level {rms_dbfs:.0f} dBFS): "
                    f"it sounds like noise, music or an empty room; {need}.",
                )
            )
        elif speech_s < config.min_speech_s:
            problems.append(
                QualityProblem(
                    ProblemCode.TOO_SHORT,
                    f"Only {speech_s:.2f} s of speech was detected in {duration_s:.1f} s of audio; {need}.",
                )
            )
    if clipped_fraction > config.max_clipped_fraction:
        problems.append(
            QualityProblem(
                ProblemCode.CLIPPED,
                f"{clipped_fraction:.1%} of the samples are clipped (at full scale); at most "
                f"{config.max_clipped_fraction:.1%} is accepted. Lower the input gain or move away from the microphone.",
            )
        )
    return problems


def assess_quality(
    waveform: np.ndarray,
    sample_rate: int,
    config: QualityConfig | None = None,
    detector: SpeechDetector | None = None,
) -> QualityReport:
    """Measure a mono float waveform (as :func:`ser.audio.loader.load_audio` returns) against ``config``."""
    config = config or QualityConfig()
    waveform = np.asarray(waveform, dtype=np.float32)
    duration_s = len(waveform) / sample_rate
    clipped_fraction = float(np.count_nonzero(np.abs(waveform) >= config.clip_level) / max(1, len(waveform)))
    rms_dbfs = level_dbfs(sum_of_squares(waveform), len(waveform))
    speech_s: float | None = None
    segments: list[tuple[float, float]] = []
    # A clip refused for its length is not run through the VAD: that would cost time for nothing.
    if config.max_duration_s is None or duration_s <= config.max_duration_s:
        detector = detector or get_speech_detector()
        vad_input = resample(waveform, sample_rate, detector.sample_rate)
        segments = detector.segments(detector.speech_probabilities(vad_input), len(vad_input), config)
        speech_s = float(sum(end - start for start, end in segments))
    problems = find_problems(duration_s, speech_s, clipped_fraction, rms_dbfs, config)
    return QualityReport(duration_s, speech_s, clipped_fraction, rms_dbfs, segments, problems)


def check_quality(
    waveform: np.ndarray,
    sample_rate: int,
    config: QualityConfig | None = None,
    detector: SpeechDetector | None = None,
) -> QualityReport:
    """:func:`assess_quality`, raising :class:`UnusableAudioError` when anything is wrong."""
    report = assess_quality(waveform, sample_rate, config, detector)
    if not report.ok:
        raise UnusableAudioError(report)
    return report


# -- confidence ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """The stable answer shape (API): the top label always, flagged when not confident enough."""

    label: str
    confidence: float
    uncertain: bool
    confidence_threshold: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def is_uncertain(confidence: float, threshold: float = DEFAULT_CONFIDENCE_THRESHOLD) -> bool:
    """Below the threshold is uncertain; exactly at it is certain (matches ``coverage_curve``)."""
    return bool(confidence < threshold)


def decide(probabilities: Mapping[str, float], threshold: float = DEFAULT_CONFIDENCE_THRESHOLD) -> Answer:
    """``{label: probability}`` -> :class:`Answer` (ties go to the first label, like argmax)."""
    if not probabilities:
        raise ValueError("No probabilities to decide from.")
    label = max(probabilities, key=probabilities.__getitem__)
    confidence = float(probabilities[label])
    return Answer(
        label=label,
        confidence=confidence,
        uncertain=is_uncertain(confidence, threshold),
        confidence_threshold=float(threshold),
        probabilities={key: float(value) for key, value in probabilities.items()},
    )


def coverage_curve(
    confidences: Sequence[float], correct: Sequence[bool], thresholds: Iterable[float] | None = None
) -> list[dict]:
    """For each threshold: the share of answers kept (confidence >= threshold) and their accuracy.

    ``accuracy`` is ``None`` where nothing is kept. Default thresholds: 0.00, 0.05, ..., 1.00.
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidences.shape != correct.shape:
        raise ValueError(f"{confidences.shape[0]} confidences but {correct.shape[0]} correctness flags.")
    if thresholds is None:
        thresholds = np.round(np.linspace(0.0, 1.0, 21), 2)
    rows = []
    for threshold in thresholds:
        kept = ~np.array([is_uncertain(value, float(threshold)) for value in confidences], dtype=bool)
        n_kept = int(kept.sum())
        rows.append(
            {
                "threshold": float(threshold),
                "coverage": n_kept / len(confidences) if len(confidences) else 0.0,
                "accuracy": float(correct[kept].mean()) if n_kept else None,
                "n_kept": n_kept,
            }
        )
    return rows
