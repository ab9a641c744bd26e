"""Long recordings -> speech segments -> per-segment emotions (ser.inference.timeline), with espeak-ng speech."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
from conftest import REPO_ROOT, SAMPLE_RATE, write_clip

from ser.audio.loader import (
    EmptyAudioError,
    iter_audio_blocks,
    load_audio,
    prepare_waveform,
)
from ser.inference.predictor import EmotionClassifier
from ser.inference.quality import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    QualityConfig,
    UnusableAudioError,
)
from ser.inference.timeline import (
    TABLE_HEADERS,
    TimelineConfig,
    _cut_segments,
    plan_segments,
    split_long_segments,
    timeline_figure,
    timeline_for_file,
    timeline_for_waveform,
    timeline_table,
)

GAP_S = 2.0
#: Allowed error on a segment edge: VAD frames are 32 ms, plus the 0.1 s padding and onset smoothing.
EDGE_TOLERANCE_S = 0.25


def trimmed(samples: np.ndarray, level: float = 1e-3) -> np.ndarray:
    """espeak-ng pads its output with silence; the speech itself is where the samples are non-zero."""
    loud = np.flatnonzero(np.abs(samples) > level)
    return samples[loud[0] : loud[-1] + 1]


@pytest.fixture(scope="module")
def sentence(espeak_speech) -> np.ndarray:
    samples, sample_rate = espeak_speech("The quick brown fox jumps over the lazy dog.")
    return trimmed(prepare_waveform(samples, sample_rate))


@pytest.fixture(scope="module")
def classifier(tiny_cnn_dir) -> EmotionClassifier:
    return EmotionClassifier.from_pretrained(tiny_cnn_dir, backend="torch")


def silence(duration_s: float) -> np.ndarray:
    return np.zeros(int(duration_s * SAMPLE_RATE), dtype=np.float32)


@pytest.fixture(scope="module")
def two_sentences(sentence) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """1 s silence + speech + 2 s silence + speech + 1 s silence, and where the speech really is."""
    parts = [silence(1.0), sentence, silence(GAP_S), sentence, silence(1.0)]
    length_s = len(sentence) / SAMPLE_RATE
    truth = [(1.0, 1.0 + length_s), (1.0 + length_s + GAP_S, 1.0 + 2 * length_s + GAP_S)]
    return np.concatenate(parts), truth


def test_segments_are_found_where_the_speech_is(classifier, two_sentences, tmp_path):
    recording, truth = two_sentences
    # 22.05 kHz like espeak-ng's own output: the streaming reader resamples block by block.
    path = write_clip(tmp_path / "two.wav", soundfile_resample(recording, 22_050), 22_050)
    timeline = timeline_for_file(classifier, path, TimelineConfig(block_s=0.7))
    assert len(timeline.segments) == 2
    for segment, (start_s, end_s) in zip(timeline.segments, truth):
        assert segment.start_s == pytest.approx(start_s, abs=EDGE_TOLERANCE_S)
        assert segment.end_s == pytest.approx(end_s, abs=EDGE_TOLERANCE_S)
    assert timeline.duration_s == pytest.approx(len(recording) / SAMPLE_RATE, abs=1e-3)
    assert timeline.quality.ok and timeline.quality.speech_s == pytest.approx(
        sum(segment.end_s - segment.start_s for segment in timeline.segments)
    )


def soundfile_resample(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    from ser.audio.loader import resample

    return resample(samples, SAMPLE_RATE, sample_rate)


def test_file_and_in_memory_waveform_give_the_same_timeline(classifier, two_sentences, tmp_path):
    recording, _ = two_sentences
    path = tmp_path / "two.wav"
    soundfile.write(str(path), recording, SAMPLE_RATE, subtype="FLOAT")  # lossless, so results are identical
    from_file = timeline_for_file(classifier, path, TimelineConfig(block_s=1.3))
    # In memory as the loader gives it (DC offset removed), which is what the streamed file sees.
    from_memory = timeline_for_waveform(classifier, prepare_waveform(recording, SAMPLE_RATE), SAMPLE_RATE)
    assert from_file.records() == from_memory.records()
    # ...and the same probabilities as classifying each cut-out segment directly.
    waveform = load_audio(path)
    cuts = [waveform[round(s.start_s * SAMPLE_RATE) : round(s.end_s * SAMPLE_RATE)] for s in from_file.segments]
    expected = classifier.predict_proba(cuts)
    got = np.array([[s.probabilities[label] for label in classifier.labels] for s in from_file.segments])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_ffmpeg_only_formats_are_streamed_too(classifier, two_sentences, tmp_path):
    recording, truth = two_sentences
    wav = write_clip(tmp_path / "two.wav", recording)
    m4a = tmp_path / "two.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), str(m4a)], check=True)
    timeline = timeline_for_file(classifier, m4a, TimelineConfig(block_s=0.5))
    assert [round(segment.start_s) for segment in timeline.segments] == [round(start) for start, _ in truth]


def test_api_records_have_a_stable_shape(classifier, two_sentences):
    recording, _ = two_sentences
    timeline = timeline_for_waveform(classifier, recording, SAMPLE_RATE)
    records = json.loads(json.dumps(timeline.records()))
    assert len(records) == 2
    for record, segment in zip(records, timeline.segments):
        assert list(record) == ["start_s", "end_s", "label", "confidence", "uncertain", "probabilities", "adapted"]
        assert record["adapted"] is False  # the tiny CNN cannot adapt
        assert list(record["probabilities"]) == classifier.labels
        assert sum(record["probabilities"].values()) == pytest.approx(1.0)
        assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)
        assert record["confidence"] == record["probabilities"][record["label"]]
        assert record["uncertain"] == (record["confidence"] < timeline.confidence_threshold)
        assert record["start_s"] == round(segment.start_s, 3)


def test_confidence_threshold_marks_segments_uncertain(classifier, two_sentences):
    recording, _ = two_sentences
    everything = timeline_for_waveform(classifier, recording, SAMPLE_RATE, TimelineConfig(confidence_threshold=0.0))
    nothing = timeline_for_waveform(classifier, recording, SAMPLE_RATE, TimelineConfig(confidence_threshold=1.0))
    assert [segment.uncertain for segment in everything.segments] == [False, False]
    assert [segment.uncertain for segment in nothing.segments] == [True, True]
    rows = timeline_table(nothing)
    assert len(rows[0]) == len(TABLE_HEADERS)
    assert rows[0][2] == f"uncertain ({nothing.segments[0].label})"
    assert timeline_table(everything)[0][2] == everything.segments[0].label


def test_long_speech_is_capped_and_short_bursts_are_dropped(classifier, sentence):
    # ~25 s of speech with only 0.1 s pauses: one VAD segment, cut into pieces of at most 6 s.
    speech = np.concatenate([np.concatenate([sentence, silence(0.1)]) for _ in range(10)])
    recording = np.concatenate([silence(0.5), speech, silence(0.5)])
    config = TimelineConfig(max_segment_s=6.0)
    timeline = timeline_for_waveform(classifier, recording, SAMPLE_RATE, config)
    lengths = [segment.end_s - segment.start_s for segment in timeline.segments]
    assert max(lengths) <= 6.0 + 1e-9
    assert len(timeline.segments) >= len(speech) / SAMPLE_RATE / 6.0
    covered = sum(lengths)
    assert covered == pytest.approx(len(speech) / SAMPLE_RATE, abs=1.0)
    # A 0.3 s burst of speech is not worth an answer with min_segment_s=0.5.
    burst = np.concatenate([silence(1.0), sentence[: int(0.3 * SAMPLE_RATE)], silence(1.0), sentence, silence(1.0)])
    found = timeline_for_waveform(classifier, burst, SAMPLE_RATE)
    assert len(found.segments) == 1 and found.segments[0].start_s > 2.0


def test_split_and_plan_segments_exactly():
    assert split_long_segments([(0.0, 25.0), (30.0, 31.0)], 10.0) == [
        (0.0, 25 / 3),
        (25 / 3, 50 / 3),
        (50 / 3, 25.0),
        (30.0, 31.0),
    ]
    assert split_long_segments([(0.0, 20.0)], 10.0) == [(0.0, 10.0), (10.0, 20.0)]
    config = TimelineConfig(max_segment_s=10.0, min_segment_s=0.5)
    assert plan_segments([(0.0, 0.4), (1.0, 1.5), (2.0, 22.0)], config) == [(1.0, 1.5), (2.0, 12.0), (12.0, 22.0)]


@pytest.mark.parametrize("block", [1, 3, 7, 100])
def test_segments_are_cut_exactly_across_block_edges(block):
    signal = np.arange(50, dtype=np.float32)
    ranges = [(0, 4), (4, 9), (12, 30), (45, 50)]
    blocks = (signal[start : start + block] for start in range(0, len(signal), block))
    cuts = list(_cut_segments(blocks, ranges))
    assert [cut.tolist() for cut in cuts] == [signal[a:b].tolist() for a, b in ranges]


def test_silent_or_speechless_recordings_are_refused(classifier):
    with pytest.raises(UnusableAudioError) as caught:
        timeline_for_waveform(classifier, silence(5.0), SAMPLE_RATE)
    assert caught.value.report.codes == ["silent"]
    noise = (0.1 * np.random.default_rng(0).standard_normal(5 * SAMPLE_RATE)).astype(np.float32)
    with pytest.raises(UnusableAudioError) as caught:
        timeline_for_waveform(classifier, noise, SAMPLE_RATE)
    assert caught.value.report.codes == ["no_speech"]
    with pytest.raises(EmptyAudioError):
        timeline_for_waveform(classifier, np.zeros(0, np.float32), SAMPLE_RATE)


def test_long_recordings_are_not_refused_for_length(classifier, sentence):
    # 70 s is over the single-clip limit (60 s) but the timeline has no duration limit.
    recording = np.concatenate([silence(60.0), sentence, silence(8.0)])
    assert QualityConfig().max_duration_s < len(recording) / SAMPLE_RATE
    timeline = timeline_for_waveform(classifier, recording, SAMPLE_RATE)
    assert len(timeline.segments) == 1 and timeline.segments[0].start_s == pytest.approx(60.0, abs=EDGE_TOLERANCE_S)


def test_progress_is_reported_up_to_completion(classifier, two_sentences):
    recording, _ = two_sentences
    calls = []
    timeline_for_waveform(
        classifier, recording, SAMPLE_RATE, TimelineConfig(block_s=1.0, batch_size=1), progress=lambda f, d: calls.append((f, d))
    )
    fractions = [fraction for fraction, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert calls[-1][1] == "Classified 2/2 segments"
    assert any(description.startswith("Finding speech") for _, description in calls)


def test_figure_has_a_row_per_label(classifier, two_sentences):
    recording, _ = two_sentences
    timeline = timeline_for_waveform(classifier, recording, SAMPLE_RATE)
    figure = timeline_figure(timeline, classifier.labels)
    rows, confidence_axis = figure.axes
    assert [tick.get_text() for tick in rows.get_yticklabels()] == classifier.labels
    assert len(rows.collections) == len(timeline.segments)
    assert confidence_axis.get_xlim() == (0.0, timeline.duration_s)


# -- a 30-minute recording ------------------------------------------------------------------------
PERIOD_S = 20.0
THIRTY_MINUTES_S = 30 * 60


def write_periodic_recording(path, sentence: np.ndarray, duration_s: float) -> int:
    """A sentence at 1 s into every 20 s period, written block by block; returns the sentence count."""
    period = int(PERIOD_S * SAMPLE_RATE)
    count = int(duration_s // PERIOD_S)
    block = np.zeros(period, dtype=np.float32)
    block[SAMPLE_RATE : SAMPLE_RATE + len(sentence)] = sentence
    with soundfile.SoundFile(str(path), "w", SAMPLE_RATE, 1, format="FLAC") as output:
        for _ in range(count):
            output.write(block)
    return count


MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from ser.inference.predictor import EmotionClassifier
    from ser.inference.timeline import timeline_for_file

    classifier = EmotionClassifier.from_pretrained(sys.argv[1], backend="torch")
    timeline_for_file(classifier, sys.argv[2])  # warm-up: VAD session, torch kernels, allocator pools
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timeline = timeline_for_file(classifier, sys.argv[3])
    after_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    starts = [segment.start_s for segment in timeline.segments]
    print(json.dumps({"growth_mb": (after_kb - before_kb) / 1024, "starts": starts, "duration_s": timeline.duration_s}))
    """
)


def test_thirty_minutes_in_bounded_memory(tiny_cnn_dir, sentence, tmp_path):
    """Decoding 30 min at once would take 115 MB of float32 alone; streaming stays far below."""
    long_path, short_path = tmp_path / "thirty.flac", tmp_path / "one.flac"
    count = write_periodic_recording(long_path, sentence, THIRTY_MINUTES_S)
    write_periodic_recording(short_path, sentence, 60.0)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tiny_cnn_dir), str(short_path), str(long_path)],
        capture_output=True, text=True, env=environment, cwd=REPO_ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert count == 90 and probe["duration_s"] == THIRTY_MINUTES_S
    assert len(probe["starts"]) == count
    np.testing.assert_allclose(probe["starts"], np.arange(count) * PERIOD_S + 1.0, atol=EDGE_TOLERANCE_S)
    assert probe["growth_mb"] < 100, probe["growth_mb"]


def test_streaming_reader_matches_the_whole_file_loader(sentence, tmp_path):
    path = write_clip(tmp_path / "s.wav", soundfile_resample(sentence, 44_100), 44_100)
    blocks = list(iter_audio_blocks(path, SAMPLE_RATE, block_s=0.25))
    assert len(blocks) > 4
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path))


# -- the live app: /timeline and the gated /predict over HTTP --------------------------------------
@pytest.fixture(scope="module")
def gated_server(tiny_cnn_dir, tmp_path_factory):
    """``python app.py`` with its defaults: quality gate on, the default confidence threshold."""
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg is not installed")
    from live_server import running_app

    with running_app(tiny_cnn_dir, tmp_path_factory.mktemp("gated_server") / "app.log") as url:
        yield url


def test_live_timeline_and_predict_api_shapes(gated_server, two_sentences, tmp_path, classifier):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    recording, truth = two_sentences
    path = write_clip(tmp_path / "conversation.wav", recording)
    client = Client(gated_server, verbose=False)

    records = client.predict(handle_file(str(path)), api_name="/timeline")
    assert [list(record) for record in records] == [["start_s", "end_s", "label", "confidence", "uncertain", "probabilities", "adapted"]] * 2
    for record, (start_s, end_s) in zip(records, truth):
        assert record["start_s"] == pytest.approx(start_s, abs=EDGE_TOLERANCE_S)
        assert record["end_s"] == pytest.approx(end_s, abs=EDGE_TOLERANCE_S)
        assert list(record["probabilities"]) == classifier.labels
        assert record["uncertain"] == (record["confidence"] < DEFAULT_CONFIDENCE_THRESHOLD)

    label_value, info, answer = client.predict(handle_file(str(path)), api_name="/predict")
    assert list(answer) == ["label", "confidence", "uncertain", "confidence_threshold", "probabilities", "quality"]
    assert answer["confidence_threshold"] == DEFAULT_CONFIDENCE_THRESHOLD
    assert answer["uncertain"] == (answer["confidence"] < DEFAULT_CONFIDENCE_THRESHOLD)
    assert label_value["label"] == ("uncertain" if answer["uncertain"] else answer["label"])
    assert {item["label"] for item in label_value["confidences"]} == set(classifier.labels)
    assert answer["quality"]["ok"] is True and len(answer["quality"]["speech_segments"]) == 2
    assert "quality check" in info

    noise = (0.1 * np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE)).astype(np.float32)
    noise_path = write_clip(tmp_path / "noise.wav", noise)
    with pytest.raises(AppError, match=r"No speech was detected in 2\.0 s of audio"):
        client.predict(handle_file(str(noise_path)), api_name="/predict")
    with pytest.raises(AppError, match=r"No speech was detected"):
        client.predict(handle_file(str(noise_path)), api_name="/timeline")
