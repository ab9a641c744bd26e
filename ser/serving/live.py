"""Live mode: the bars follow the visitor while they speak (no Gradio here; ``app.py`` wires it up).

The browser's microphone stream arrives in slices (usually 48 kHz int16, about every
:data:`STREAM_EVERY_S`). Each slice goes through :class:`LiveSession.append`: downmixed, DC offset
removed and resampled to 16 kHz by one :class:`ser.audio.loader.StreamingResampler` per recording
(so slice edges leave no artefacts), then appended to the session's recording (preallocated, the
app's length limit). :func:`live_step` then looks at the newest :data:`WINDOW_S` seconds:

- **VAD gate**: Silero's speech probability per 32 ms frame over the window; the update counts as
  speech when at least :data:`MIN_VOICED_FRACTION` of the newest slice's frames are speech and the
  window holds at least :data:`MIN_WINDOW_S`. Otherwise it is "listening…" and the bars stay as they
  were (greyed by the page), rather than guessing on silence or noise.
- **Model** on the window, **smoothed** over updates (an exponential moving average, weight
  :data:`SMOOTHING` for the newest: about a second of memory at two updates a second), then the
  app's own confidence rule (:func:`ser.inference.quality.decide`: "uncertain" below the threshold).
- **Self-calibration**: with calibration on, one non-overlapping window of speech every
  :data:`WINDOW_S` seconds is added to the session's :class:`Calibration` (the same statistics as
  "Calibrate to my voice"); from its ``min_clips`` on, the windows are standardised with them.
  Statistics only, in server memory, per session; it survives Stop/Record and is reset only on
  request. A model without an utterance embedding (the TDNN) runs uncalibrated.
- **Strip**: each voiced update adds an entry to a rolling strip of the last :data:`STRIP_S` seconds
  (:func:`strip_html`, drawn as the timeline is: a row per emotion, opacity = confidence, hatched =
  uncertain); HTML because a matplotlib figure per update costs 0.3-0.5 s.

Stop scores the whole recording as one clip (:meth:`LiveSession.take_recording`). The stream
handler and the stop handler run in different threads; every method that touches the session holds
its lock.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ser.audio.loader import TARGET_SAMPLE_RATE, StreamingResampler
from ser.inference.adaptation import dominant_phrase
from ser.inference.quality import DEFAULT_CONFIDENCE_THRESHOLD, Answer, SpeechDetector, decide
from ser.serving.calibration import Calibration

logger = logging.getLogger(__name__)

#: Live sessions streaming at once. Each holds one slot of its own queue ("live") while it records;
#: four fit two cores with room to spare (docs/serving.md, "Live mode"); a fifth waits in the queue.
LIVE_CONCURRENCY_LIMIT = 4
#: How often the browser sends a slice (Gradio's ``stream_every``): two updates a second, so the
#: bars move within half a second of a change, at a server cost (~40-50 ms per voiced update on two
#: cores) that leaves room for several sessions.
STREAM_EVERY_S = 0.5
#: The model's input: the newest 3 s. Long enough for the model (it was trained on 3-4 s clips) and
#: for a sentence's tone; short enough that the bars follow a change within about two seconds.
WINDOW_S = 3.0
#: Shortest window classified (the first second of a recording is only "listening…").
MIN_WINDOW_S = 1.0
#: Fraction of the newest slice's VAD frames that must be speech for the update to count as voiced.
MIN_VOICED_FRACTION = 0.3
#: Silero's speech probability above which a frame is speech (the quality gate's default too).
VAD_THRESHOLD = 0.5
#: Weight of the newest window in the moving average of the bars.
SMOOTHING = 0.5
#: A pause longer than this (seconds of audio without speech) restarts the moving average.
SMOOTHING_RESET_S = 3.0
#: The rolling strip shows this many seconds.
STRIP_S = 60.0
#: Colours of the strip's rows, matplotlib's C0..C5 as in :func:`ser.inference.timeline.timeline_figure`.
STRIP_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


class LiveError(ValueError):
    """A slice that cannot be used (no samples, bad rate); the message is for the visitor."""


@dataclass(frozen=True)
class LiveConfig:
    max_duration_s: float = 60.0
    window_s: float = WINDOW_S
    min_window_s: float = MIN_WINDOW_S
    min_voiced_fraction: float = MIN_VOICED_FRACTION
    vad_threshold: float = VAD_THRESHOLD
    smoothing: float = SMOOTHING
    smoothing_reset_s: float = SMOOTHING_RESET_S
    strip_s: float = STRIP_S
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
    sample_rate: int = TARGET_SAMPLE_RATE


@dataclass(frozen=True)
class StripEntry:
    end_s: float
    label: str
    confidence: float
    uncertain: bool


@dataclass(frozen=True)
class LiveUpdate:
    """What one slice did. ``kind``: ``"voiced"`` (``answer`` set), ``"listening"`` (silence or
    noise: the bars stay), ``"limit"`` (the recording reached the length limit: stop now) or
    ``"ignored"`` (the recording had already ended)."""

    kind: str
    seconds: float
    answer: Answer | None = None
    calibrated: bool = False
    calibration_clips: int = 0
    voiced_fraction: float = 0.0
    model_ms: float = 0.0
    server_ms: float = 0.0


class LiveSession:
    """One browser session's live state (kept in its ``gr.State``, server memory only)."""

    def __init__(self, config: LiveConfig | None = None):
        self.config = config or LiveConfig()
        self.capacity = int(self.config.max_duration_s * self.config.sample_rate)
        self.recording = np.zeros(0, dtype=np.float32)
        self.length = 0
        self.calibration = Calibration()
        self.lock = threading.Lock()
        self._clear()
        self.active = False  # the first slice starts a recording

    # -- recording ------------------------------------------------------------------------------
    def _reset_recording(self) -> None:
        if len(self.recording) != self.capacity:
            # allocated per recording, freed at Stop: a closed tab's session may linger for an hour
            self.recording = np.zeros(self.capacity, dtype=np.float32)
        self._clear()
        self.active = True

    def _clear(self) -> None:
        self.length = 0
        self.resampler: StreamingResampler | None = None
        self.smoothed: np.ndarray | None = None
        self.last_voiced_end = 0
        self.strip: deque[StripEntry] = deque()
        self.fed_until = 0
        self.ended = False

    @property
    def seconds(self) -> float:
        return self.length / self.config.sample_rate

    def append(self, samples: np.ndarray, sample_rate: int) -> tuple[int, bool]:
        """Add one slice; returns (16 kHz samples added, whether the length limit is now reached).
        The first slice after :meth:`take_recording` (or ever) starts a new recording."""
        if not self.active:
            self._reset_recording()
        if samples.size == 0:
            return 0, self.length >= self.capacity
        if self.resampler is None or self.resampler.source_rate != sample_rate:
            self.resampler = StreamingResampler(sample_rate, self.config.sample_rate)
        piece = self.resampler(samples)
        room = len(self.recording) - self.length
        piece = piece[:room]
        self.recording[self.length : self.length + len(piece)] = piece
        self.length += len(piece)
        return len(piece), self.length >= self.capacity

    def window(self) -> np.ndarray:
        """The newest ``window_s`` seconds (a view: copy before the lock is released)."""
        return self.recording[max(0, self.length - int(self.config.window_s * self.config.sample_rate)) : self.length]

    def take_recording(self) -> np.ndarray:
        """The whole recording (a copy) for Stop, and the buffer freed; the next slice starts a new
        one. The calibration stays. A second Stop gets an empty recording."""
        waveform = self.recording[: self.length].copy()
        self.recording = np.zeros(0, dtype=np.float32)
        self.length = 0
        self.active = False
        self.ended = True
        return waveform

    def release(self) -> None:
        """Free the recording buffer without scoring it (the session ended: tab closed, connection
        lost, or a Stop that failed); the next slice, if any, starts a new recording."""
        with self.lock:
            self.recording = np.zeros(0, dtype=np.float32)
            self._clear()
            self.active = False

    @property
    def recording_now(self) -> bool:
        """Whether a recording buffer is held: from the first slice to Stop, the limit's Stop or release."""
        return len(self.recording) > 0

    def reset_calibration(self) -> None:
        self.calibration = self.calibration.cleared()

    # -- smoothing and the strip ----------------------------------------------------------------
    def smooth(self, probabilities: np.ndarray) -> np.ndarray:
        pause = self.length - self.last_voiced_end
        if self.smoothed is None or pause > self.config.smoothing_reset_s * self.config.sample_rate:
            self.smoothed = np.asarray(probabilities, dtype=np.float64)
        else:
            weight = self.config.smoothing
            self.smoothed = weight * np.asarray(probabilities, dtype=np.float64) + (1 - weight) * self.smoothed
        self.last_voiced_end = self.length
        return self.smoothed


class LiveSessions:
    """The live sessions of one app, by browser session (Gradio's session hash), held here rather than
    in a ``gr.State`` so that the app can free a session whose tab was closed or whose connection
    dropped (Gradio keeps a closed tab's state for an hour) and can count them for ``/health`` and
    ``/metrics``. ``limit``: how many may record at once (the stream's concurrency limit)."""

    def __init__(self, config: LiveConfig, limit: int):
        self.config = config
        self.limit = limit
        self._sessions: dict[str, LiveSession] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> LiveSession:
        """The session of browser session ``key``, created on first use."""
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = LiveSession(self.config)
            return session

    def close(self, key: str) -> bool:
        """Forget ``key``'s session and free its buffer (its calibration goes with it); whether it existed."""
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            session.release()
        return session is not None

    def recording(self) -> int:
        """Sessions holding a recording now."""
        with self._lock:
            sessions = list(self._sessions.values())
        return sum(session.recording_now for session in sessions)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def voiced_fraction(speech_probabilities: np.ndarray, newest_samples: int, frame_samples: int, threshold: float) -> float:
    """Share of the frames covering the newest ``newest_samples`` whose speech probability exceeds ``threshold``."""
    if len(speech_probabilities) == 0 or newest_samples <= 0:
        return 0.0
    frames = max(1, min(len(speech_probabilities), -(-newest_samples // frame_samples)))
    return float(np.mean(speech_probabilities[-frames:] > threshold))


def live_step(
    classifier,
    detector: SpeechDetector,
    session: LiveSession,
    samples: np.ndarray,
    sample_rate: int,
    calibrate: bool,
) -> LiveUpdate:
    """One slice of the stream: append it, gate the newest window, classify and smooth when voiced."""
    started = time.perf_counter()
    config = session.config
    with session.lock:
        if session.active and session.ended:  # the length limit was reached; Stop has not run yet
            return LiveUpdate("ignored", session.seconds)
        added, full = session.append(samples, sample_rate)
        if full:
            session.ended = True
            return LiveUpdate("limit", session.seconds, server_ms=1000 * (time.perf_counter() - started))
        window = session.window().copy()
        calibration = session.calibration
        feed = calibrate and classifier.supports_adaptation and session.length - session.fed_until >= config.window_s * config.sample_rate
    fraction = 0.0
    if len(window) >= config.min_window_s * config.sample_rate:
        probabilities = detector.speech_probabilities(window)
        fraction = voiced_fraction(probabilities, added, detector.frame_samples, config.vad_threshold)
    if fraction < config.min_voiced_fraction or added == 0:
        return LiveUpdate(
            "listening", session.seconds, calibrated=calibrate and calibration.calibrated, calibration_clips=calibration.clips,
            voiced_fraction=fraction, server_ms=1000 * (time.perf_counter() - started),
        )
    model_started = time.perf_counter()
    if calibrate and classifier.supports_adaptation:
        embedding = classifier.embed_batch([window])
        if feed:
            calibration = calibration.add(embedding[0], classifier.probabilities_from_embeddings(embedding)[0])
        row = classifier.probabilities_from_embeddings(embedding, calibration.standardisation())[0]
    else:
        row = classifier.predict_proba([window])[0]
    model_ms = 1000 * (time.perf_counter() - model_started)
    with session.lock:
        if feed:
            session.calibration = calibration
            session.fed_until = session.length
        smoothed = session.smooth(row)
        answer = decide(dict(zip(classifier.labels, smoothed.tolist())), config.confidence_threshold)
        session.strip.append(StripEntry(session.seconds, answer.label, answer.confidence, answer.uncertain))
        horizon = session.seconds - config.strip_s
        while session.strip and session.strip[0].end_s < horizon:
            session.strip.popleft()
        seconds = session.seconds
    return LiveUpdate(
        "voiced", seconds, answer, calibrated=calibrate and calibration.calibrated and classifier.supports_adaptation,
        calibration_clips=calibration.clips, voiced_fraction=fraction, model_ms=model_ms,
        server_ms=1000 * (time.perf_counter() - started),
    )


def strip_html(session: LiveSession, labels: list[str] | tuple[str, ...], stream_every_s: float = STREAM_EVERY_S) -> str:
    """The rolling strip of the last ``strip_s`` seconds: one row per emotion, one cell per voiced
    update, opacity = confidence, hatched = uncertain (the timeline's picture, in HTML)."""
    config = session.config
    with session.lock:
        now = session.seconds
        entries = list(session.strip)
    start = max(0.0, now - config.strip_s)
    span = max(config.strip_s, 1e-9)
    row_px = 16
    cells = []
    for entry in entries:
        if entry.label not in labels:
            continue
        left = 100 * (entry.end_s - stream_every_s - start) / span
        width = 100 * stream_every_s / span
        if left + width < 0:
            continue
        row = list(labels).index(entry.label)
        colour = STRIP_COLOURS[row % len(STRIP_COLOURS)]
        hatch = "background-image:repeating-linear-gradient(45deg,#0007 0 2px,transparent 2px 5px);" if entry.uncertain else ""
        title = html.escape(f"{entry.end_s:.1f} s: {entry.label} {entry.confidence:.0%}{' (uncertain)' if entry.uncertain else ''}")
        cells.append(
            f'<div class="live-cell" title="{title}" style="position:absolute;left:{max(0.0, left):.2f}%;width:{width:.2f}%;'
            f'top:{row * row_px + 1}px;height:{row_px - 2}px;background-color:{colour};'
            f'opacity:{0.25 + 0.75 * entry.confidence:.2f};{hatch}"></div>'
        )
    names = "".join(f'<div style="height:{row_px}px;line-height:{row_px}px;font-size:11px">{html.escape(label)}</div>' for label in labels)
    return (
        f'<div class="live-strip" data-entries="{len(entries)}"><div style="display:flex;gap:6px">'
        f"<div>{names}</div>"
        f'<div style="position:relative;flex:1;height:{row_px * len(labels)}px;border:1px solid #8884">{"".join(cells)}</div>'
        f'</div><div style="font-size:11px;opacity:0.7">last {config.strip_s:g} s · {start:.0f}–{now:.1f} s of this recording · '
        f"hatched = uncertain</div></div>"
    )


def calibration_line(session: LiveSession, calibrate: bool, can_calibrate: bool, labels: list[str] | None = None) -> str:
    """The page's one line on the live calibration state."""
    if not can_calibrate:
        return "Calibration: not available with this model (no utterance embedding); live answers are uncalibrated."
    calibration = session.calibration
    if not calibrate:
        return f"Calibration: **off** (answers use the training statistics; {calibration.clips} windows kept, not used)."
    if calibration.calibrated:
        return f"Calibration: **on, calibrated** to your voice from {calibration.clips} windows of your speech."
    if calibration.too_uniform:
        return (
            f"Calibration: **on, not used**: your last {dominant_phrase(calibration.clips, 'windows', labels, *calibration.dominant)}, "
            "too uniform for a voice profile; answers are uncalibrated until you speak in other moods."
        )
    return (
        f"Calibration: **on, collecting** ({calibration.clips} of {calibration.min_clips} windows of speech; "
        "answers are uncalibrated until then)."
    )
