"""Every clip length gets an answer or a clear refusal, never an exception: the windowing of long
clips (issue 29's crash at 20-25 s and wrong windows at 40-45 s), property-tested with hypothesis
over lengths from just over the 0.5 s minimum to the 60 s limit, every window boundary and the
samples around it included, for ``window_spans``, ``classify_waveform``, ``embed_batch``, the
timeline, live Stop and ``/predict`` over HTTP."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from live_server import PageRequest, live_handlers

from ser.audio.loader import AudioError, resample
from ser.inference.predictor import DEFAULT_WINDOW_S, EmotionClassifier, window_spans
from ser.inference.timeline import TimelineConfig, timeline_for_waveform

RATE = 16_000
WINDOW = int(DEFAULT_WINDOW_S * RATE)
#: Just over the quality gate's 0.5 s minimum of speech, and the app's 60 s limit.
SHORTEST = RATE // 2 + 1
LONGEST = 60 * RATE
#: Each window boundary (a multiple of the window, and a window plus the quarter-window tail that
#: is merged rather than scored alone) with the samples on either side.
BOUNDARIES = sorted(
    {
        edge + offset
        for base in (WINDOW, 2 * WINDOW, 3 * WINDOW)
        for edge in (base, base + WINDOW // 4)
        for offset in (-1, 0, 1)
        if SHORTEST <= edge + offset <= LONGEST
    }
)
#: Deterministic runs (a flaky test is a bug): hypothesis derives its examples from the test itself.
LENGTH_SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
lengths = st.integers(min_value=SHORTEST, max_value=LONGEST)


def with_boundaries(test):
    for length in BOUNDARIES:
        test = example(length)(test)
    return test


# -- the spans, exactly --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("num_samples", "expected"),
    [
        (1, [(0, 1)]),
        (20, [(0, 20)]),
        (21, [(0, 21)]),  # a 1-sample tail joins the window before it
        (24, [(0, 24)]),
        (25, [(0, 20), (20, 25)]),  # a quarter window is scored on its own
        (40, [(0, 20), (20, 40)]),
        (44, [(0, 20), (20, 44)]),  # the bug replaced the first window here
        (45, [(0, 20), (20, 40), (40, 45)]),
        (60, [(0, 20), (20, 40), (40, 60)]),
    ],
)
def test_window_spans_on_tiny_lengths(num_samples, expected):
    assert window_spans(num_samples, 20) == expected


@pytest.mark.parametrize(("num_samples", "window"), [(0, 20), (-1, 20), (10, 0)])
def test_window_spans_refuse_nothing_to_cut(num_samples, window):
    with pytest.raises(ValueError, match="positive"):
        window_spans(num_samples, window)


@settings(max_examples=200, derandomize=True)
@given(st.integers(1, 10_000), st.integers(1, 2_000))
def test_window_spans_tile_the_clip_without_short_or_long_pieces(num_samples, window):
    spans = window_spans(num_samples, window)
    assert spans[0][0] == 0 and spans[-1][1] == num_samples
    assert all(end == next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    for start, end in spans:
        assert min(num_samples, max(1, window // 4)) <= end - start < window + max(1, window // 4)


# -- in process, on the tiny Whisper model -------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(tiny_whisper_classifier) -> EmotionClassifier:
    return tiny_whisper_classifier


@pytest.fixture(scope="module")
def speech(espeak_speech) -> np.ndarray:
    """A minute of real (synthetic) speech with pauses, so the VAD finds speech at every length."""
    samples, rate = espeak_speech("Every length gets an answer, from half a second to a whole minute of speech.")
    sentence = np.concatenate([resample(samples, rate, RATE), np.zeros(RATE // 2, np.float32)])
    return np.tile(sentence, LONGEST // len(sentence) + 1)[:LONGEST].astype(np.float32)


def noise(num_samples: int) -> np.ndarray:
    return (np.random.default_rng(num_samples).standard_normal(num_samples) * 0.1).astype(np.float32)


def pieces_by_hand(waveform: np.ndarray) -> list[np.ndarray]:
    """The windows as the docs describe them, without ``window_spans``: 20 s each, and a tail shorter
    than 5 s joined to the window before it."""
    full, tail = divmod(len(waveform), WINDOW)
    if full == 0:
        return [waveform]
    cuts = [index * WINDOW for index in range(full + 1)]
    if tail and tail < WINDOW // 4:
        cuts[-1] = len(waveform)
    elif tail:
        cuts.append(len(waveform))
    return [waveform[start:end] for start, end in zip(cuts, cuts[1:])]


@LENGTH_SETTINGS
@given(lengths)
@with_boundaries
def test_an_embedding_is_the_length_weighted_mean_of_its_windows(classifier, num_samples):
    waveform = noise(num_samples)
    pieces = pieces_by_hand(waveform)
    assert sum(map(len, pieces)) == num_samples
    expected = sum(len(piece) * classifier.embed_batch([piece])[0].astype(np.float64) for piece in pieces) / num_samples
    np.testing.assert_allclose(classifier.embed_batch([waveform])[0], expected, rtol=1e-5, atol=1e-6)


@LENGTH_SETTINGS
@given(lengths)
@with_boundaries
def test_classify_waveform_answers_every_length(classifier, num_samples):
    prediction = classifier.classify_waveform(noise(num_samples))
    assert prediction.duration_s == pytest.approx(num_samples / RATE)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    assert prediction.label in classifier.labels


@LENGTH_SETTINGS
@given(lengths)
@with_boundaries
def test_the_timeline_answers_or_refuses_every_length(classifier, speech, num_samples):
    try:
        timeline = timeline_for_waveform(classifier, speech[:num_samples], RATE, TimelineConfig(confidence_threshold=0.0))
    except AudioError as refusal:  # a clear refusal: a message for the user
        assert str(refusal)
        return
    assert timeline.duration_s == pytest.approx(num_samples / RATE, abs=0.01)
    assert all(0 <= segment.start_s < segment.end_s <= timeline.duration_s + 0.01 for segment in timeline.segments)


# -- live Stop, through its handler ---------------------------------------------------------------
@pytest.fixture(scope="module")
def live(classifier):
    return live_handlers(classifier)


@LENGTH_SETTINGS
@given(lengths)
@with_boundaries
def test_live_stop_answers_every_length_and_frees_the_recording(live, speech, num_samples):
    request = PageRequest(f"stop-{num_samples}")
    session = live.sessions.get(request.session_hash)
    session.append(speech[:num_samples], RATE)
    assert session.recording_now
    text, _ = live.stop(False, request)
    assert text.startswith(f"**Whole recording ({num_samples / RATE:.1f} s):**")
    assert not session.recording_now
    assert live.stop(False, request) == ("Nothing was recorded.", None)  # a second Stop
    live.closed(request)


# -- /predict over HTTP ---------------------------------------------------------------------------
@settings(max_examples=4, deadline=None, derandomize=True)
@given(lengths)
@example(WINDOW + RATE * 2)  # 22 s: the crash of issue 29
@example(2 * WINDOW + RATE * 2)  # 42 s: the silently wrong windows
@example(WINDOW)
@example(WINDOW + WINDOW // 4)
@example(LONGEST)
@example(LONGEST + 1)  # over the limit: refused with a message
def test_predict_over_http_answers_or_refuses_every_length(ungated_server_url, tmp_path_factory, num_samples):
    import soundfile
    from live_server import file_data, rest_call, rest_upload

    path = tmp_path_factory.mktemp("lengths") / f"clip_{num_samples}.wav"
    soundfile.write(str(path), noise(num_samples), RATE, subtype="PCM_16")
    server_path = rest_upload(ungated_server_url, path).json()[0]
    status, event, data = rest_call(ungated_server_url, [file_data(server_path)])
    assert status == 200
    if num_samples > LONGEST:
        assert event == "error" and "60 s" in data["error"]
        return
    assert event == "complete", data
    assert sum(data[2]["probabilities"].values()) == pytest.approx(1.0)
