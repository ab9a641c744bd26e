"""Live mode's pure parts (ser.serving.live, the loader's StreamingResampler) on tiny arrays, with a
stand-in classifier and VAD: buffering, resampling across slice edges, gating, smoothing,
self-calibration, the time limit and the strip."""

from __future__ import annotations

import numpy as np
import pytest

from ser.audio.loader import DcBlocker, StreamingResampler, remove_dc_offset
from ser.serving.live import LiveConfig, LiveSession, calibration_line, live_step, strip_html, voiced_fraction

LABELS = ("angry", "sad")
FRAME = 512


class LoudnessVad:
    """Speech wherever a 512-sample frame's mean absolute value exceeds 0.05."""

    frame_samples = FRAME

    def speech_probabilities(self, waveform: np.ndarray) -> np.ndarray:
        frames = len(waveform) // FRAME
        return (np.abs(waveform[: frames * FRAME]).reshape(frames, FRAME).mean(axis=1) > 0.05).astype(np.float32)


class SignClassifier:
    """'angry' for windows with a positive mean, 'sad' otherwise; embedding = the window's mean."""

    labels = LABELS
    sample_rate = 16_000

    def __init__(self, adaptable: bool = True):
        self.supports_adaptation = adaptable
        self.statistics_seen: list = []

    def _row(self, value: float) -> np.ndarray:
        return np.array([0.9, 0.1]) if value > 0 else np.array([0.1, 0.9])

    def embed_batch(self, waveforms):
        return np.array([[float(np.mean(waveform))] for waveform in waveforms], dtype=np.float32)

    def probabilities_from_embeddings(self, embeddings, statistics=None):
        self.statistics_seen.append(statistics)
        return np.stack([self._row(row[0]) for row in embeddings])

    def predict_proba(self, waveforms, statistics=None):
        assert not self.supports_adaptation or statistics is None
        return np.stack([self._row(float(np.mean(waveform))) for waveform in waveforms])


def config(**overrides) -> LiveConfig:
    return LiveConfig(**{"max_duration_s": 10.0, "confidence_threshold": 0.5, **overrides})


def loud(seconds: float, sign: float = 1.0, rate: int = 16_000) -> np.ndarray:
    """A signal the stand-in VAD calls speech and whose mean has ``sign`` (after the DC blocker too)."""
    time = np.arange(int(seconds * rate)) / rate
    return (sign * 0.3 * np.abs(np.sin(2 * np.pi * 200 * time))).astype(np.float32) + sign * 0.1 * np.sin(2 * np.pi * 300 * time).astype(np.float32)


# -- the resampler ------------------------------------------------------------------------------
def test_streaming_resampler_slices_equal_one_pass():
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((48_000, 2)) * 3000).astype(np.int16)
    whole = StreamingResampler(48_000)(audio)
    sliced = StreamingResampler(48_000)
    pieces = [sliced(audio[first : first + 4_800]) for first in range(0, len(audio), 4_800)]
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-5)
    # downmixed (mean of channels), int16 scaled to [-1, 1), DC removed, 48 kHz -> 16 kHz (minus the resampler's delay)
    assert abs(len(whole) - 16_000) < 400 and whole.dtype == np.float32


def test_streaming_resampler_same_rate_is_the_dc_blocker():
    samples = np.linspace(-0.5, 0.5, 1000, dtype=np.float32) + 0.3
    streamed = StreamingResampler(16_000)
    out = np.concatenate([streamed(samples[:300]), streamed(samples[300:]), streamed.flush()])
    np.testing.assert_allclose(out, remove_dc_offset(samples, 16_000), atol=1e-6)
    blocker = DcBlocker(16_000)
    np.testing.assert_allclose(np.concatenate([blocker(samples[:500]), blocker(samples[500:])]), out, atol=1e-6)


# -- gating and buffering -----------------------------------------------------------------------
def test_voiced_fraction_counts_the_newest_frames_only():
    probabilities = np.array([0.9, 0.9, 0.9, 0.1, 0.9, 0.1])
    assert voiced_fraction(probabilities, 2 * FRAME, FRAME, 0.5) == 0.5
    assert voiced_fraction(probabilities, 2 * FRAME + 1, FRAME, 0.5) == pytest.approx(1 / 3)
    assert voiced_fraction(probabilities, 100 * FRAME, FRAME, 0.5) == pytest.approx(4 / 6)
    assert voiced_fraction(np.zeros(0), FRAME, FRAME, 0.5) == 0.0


def test_session_buffer_limit_and_restart():
    session = LiveSession(config(max_duration_s=1.0))
    assert session.append(np.ones(8_000, np.float32), 16_000) == (8_000, False)
    assert session.append(np.ones(12_000, np.float32), 16_000) == (8_000, True)
    assert session.seconds == 1.0
    recording = session.take_recording()
    assert len(recording) == 16_000
    session.append(np.ones(1_600, np.float32), 16_000)
    assert session.seconds == pytest.approx(0.1)  # a new recording


def test_smoothing_is_an_exponential_average_reset_after_a_pause():
    session = LiveSession(config(smoothing=0.5, smoothing_reset_s=1.0))
    session.length = 16_000
    np.testing.assert_allclose(session.smooth(np.array([1.0, 0.0])), [1.0, 0.0])
    session.length += 8_000
    np.testing.assert_allclose(session.smooth(np.array([0.0, 1.0])), [0.5, 0.5])
    session.length += 8_000
    np.testing.assert_allclose(session.smooth(np.array([0.0, 1.0])), [0.25, 0.75])
    session.length += 32_000  # two seconds without speech
    np.testing.assert_allclose(session.smooth(np.array([1.0, 0.0])), [1.0, 0.0])


# -- the update step ----------------------------------------------------------------------------
def feed(session, classifier, audio, calibrate=True, slice_s=0.5):
    step = int(slice_s * 16_000)
    return [live_step(classifier, LoudnessVad(), session, audio[first : first + step], 16_000, calibrate) for first in range(0, len(audio), step)]


def test_silence_is_listening_and_keeps_the_bars():
    session, classifier = LiveSession(config()), SignClassifier()
    updates = feed(session, classifier, np.concatenate([np.zeros(16_000, np.float32), loud(2.0), np.zeros(8_000, np.float32)]))
    assert [update.kind for update in updates] == ["listening", "listening", "voiced", "voiced", "voiced", "voiced", "listening"]
    assert updates[-2].answer.label == "angry"
    assert session.strip[-1].label == "angry" and len(session.strip) == 4  # silence adds nothing to the strip


def test_headline_moves_and_smooths():
    session, classifier = LiveSession(config()), SignClassifier()
    updates = feed(session, classifier, np.concatenate([loud(3.0), loud(3.0, sign=-1.0)]), calibrate=False)
    voiced = [update for update in updates if update.kind == "voiced"]
    assert voiced[3].answer.label == "angry"
    assert voiced[-1].answer.label == "sad"
    probabilities = [update.answer.probabilities["sad"] for update in voiced]
    assert probabilities[-1] > probabilities[-3] > probabilities[3]


def test_calibration_counts_one_window_per_three_seconds_and_then_standardises():
    session, classifier = LiveSession(config(max_duration_s=40.0)), SignClassifier()
    # One class throughout is too uniform to calibrate to by default (the next test); this one counts windows.
    session.calibration = type(session.calibration)(None, min_clips=3, max_dominant_share=1.0)
    updates = feed(session, classifier, loud(10.0))
    assert session.calibration.clips == 3  # at 3, 6 and 9 s
    assert [update.calibrated for update in updates].index(True) == 17  # the update at 9 s
    assert classifier.statistics_seen[-1] is session.calibration.statistics
    # Every calibrated answer, and only those, was standardised with the calibration's statistics.
    assert sum(statistics is not None for statistics in classifier.statistics_seen) == sum(update.calibrated for update in updates)
    session.take_recording()
    feed(session, classifier, loud(1.0))
    assert session.calibration.clips == 3  # survives Stop and a new recording
    session.reset_calibration()
    assert session.calibration.clips == 0 and session.calibration.min_clips == 3


def test_live_calibration_to_one_mood_only_is_not_used_and_says_why():
    session, classifier = LiveSession(config(max_duration_s=40.0)), SignClassifier()
    session.calibration = type(session.calibration)(None, min_clips=3)
    updates = feed(session, classifier, loud(10.0))
    assert session.calibration.clips == 3 and session.calibration.too_uniform
    assert not any(update.calibrated for update in updates) and all(statistics is None for statistics in classifier.statistics_seen)
    line = calibration_line(session, True, True, LABELS)
    assert "not used" in line and "mostly sound angry (90% of their answers)" in line


def test_calibration_off_and_models_that_cannot_adapt():
    session = LiveSession(config())
    updates = feed(session, SignClassifier(), loud(4.0), calibrate=False)
    assert session.calibration.clips == 0 and not any(update.calibrated for update in updates)
    session = LiveSession(config())
    updates = feed(session, SignClassifier(adaptable=False), loud(4.0), calibrate=True)
    assert session.calibration.clips == 0 and updates[-1].answer.label == "angry" and not updates[-1].calibrated


def test_time_limit_then_ignored_until_stop():
    session, classifier = LiveSession(config(max_duration_s=2.0)), SignClassifier()
    updates = feed(session, classifier, loud(3.0))
    assert [update.kind for update in updates][3:] == ["limit", "ignored", "ignored"]
    assert len(session.take_recording()) == 32_000
    assert feed(session, classifier, loud(0.5))[0].kind == "listening"  # Record again: a new recording


def test_strip_keeps_the_last_seconds():
    session, classifier = LiveSession(config(max_duration_s=30.0, strip_s=5.0)), SignClassifier()
    feed(session, classifier, np.concatenate([loud(4.0), loud(6.0, sign=-1.0)]), calibrate=False)
    assert session.strip[0].end_s >= session.seconds - 5.0
    page = strip_html(session, LABELS)
    assert page.count('class="live-cell"') == len(session.strip) and "sad" in page
    assert "repeating-linear-gradient" not in page  # threshold 0.5: nothing uncertain
    session.strip[-1] = type(session.strip[-1])(session.seconds, "sad", 0.4, True)
    assert "repeating-linear-gradient" in strip_html(session, LABELS)
