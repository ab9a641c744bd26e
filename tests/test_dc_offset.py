"""A DC offset is removed by the loader, for every path, before the quality gate and the model."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from conftest import SAMPLE_RATE, write_clip

from ser.audio.loader import DcBlocker, iter_audio_blocks, load_audio, prepare_waveform
from ser.inference.quality import QualityConfig, check_quality

SENTENCE = "The weather was lovely this morning, so we walked along the river for an hour."
SCALE, OFFSET = 0.3, 0.6


@pytest.fixture(scope="module")
def offset_speech(espeak_speech, tmp_path_factory):
    """(path of espeak-ng speech x 0.3 + 0.6 at its own 22.05 kHz, path of the same speech x 0.3, no offset)."""
    samples, sample_rate = espeak_speech(SENTENCE)
    directory = tmp_path_factory.mktemp("dc")
    shifted = directory / "offset.wav"
    soundfile.write(str(shifted), SCALE * samples + OFFSET, sample_rate, subtype="FLOAT")
    centred = directory / "centred.wav"
    soundfile.write(str(centred), SCALE * samples, sample_rate, subtype="FLOAT")
    return shifted, centred


def test_offset_speech_is_centred_and_passes_the_gate(offset_speech):
    shifted, centred = offset_speech
    waveform = load_audio(shifted)
    assert abs(float(waveform.mean())) < 1e-3
    # What the gate and the model see is the speech itself, as if it had been recorded without the offset.
    reference = load_audio(centred)
    assert np.abs(waveform - reference).max() < 1e-3
    report = check_quality(waveform, SAMPLE_RATE, QualityConfig())
    assert report.ok and report.speech_s > 3.0
    assert report.rms_dbfs == pytest.approx(check_quality(reference, SAMPLE_RATE).rms_dbfs, abs=0.5)


def test_offset_is_removed_for_arrays_and_integer_pcm():
    time_s = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = 0.2 * np.sin(2 * np.pi * 200 * time_s)
    pcm = np.round((tone + 0.5) * 32767).astype(np.int16)  # as a microphone with a bias would deliver
    waveform = prepare_waveform(pcm, SAMPLE_RATE)
    assert abs(float(waveform.mean())) < 1e-3
    # 200 Hz passes at full level; the 5 Hz high-pass only shifts its phase by ~1.4 degrees (< 0.006 here).
    np.testing.assert_allclose(waveform, tone, atol=1e-2)
    assert np.std(waveform) == pytest.approx(np.std(tone), rel=1e-2)


def test_streamed_blocks_are_centred_like_the_whole_file(offset_speech, tmp_path):
    shifted, _ = offset_speech
    blocks = list(iter_audio_blocks(shifted, SAMPLE_RATE, block_s=0.25))
    assert len(blocks) > 4
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(shifted))
    # A slow drift (a long recording's bias wandering) is taken out too, block by block.
    time_s = np.arange(20 * SAMPLE_RATE) / SAMPLE_RATE
    drifting = (0.1 * np.sin(2 * np.pi * 300 * time_s) + 0.4 * np.sin(2 * np.pi * 0.05 * time_s)).astype(np.float32)
    path = write_clip(tmp_path / "drift.wav", drifting)
    streamed = np.concatenate(list(iter_audio_blocks(path, SAMPLE_RATE, block_s=2.0)))
    assert np.abs(streamed).max() < 0.12


def test_dc_blocker_state_carries_across_blocks():
    rng = np.random.default_rng(0)
    signal = (0.3 + 0.1 * rng.standard_normal(10_000)).astype(np.float32)
    whole = DcBlocker(SAMPLE_RATE)(signal)
    blocker = DcBlocker(SAMPLE_RATE)
    pieces = np.concatenate([blocker(signal[:1]), blocker(signal[1:4_000]), blocker(signal[4_000:])])
    np.testing.assert_array_equal(pieces, whole)
    assert abs(float(whole[1_000:].mean())) < 0.01


def test_app_answers_offset_speech_with_the_gate_on(offset_speech, tiny_cnn_dir):
    import app
    from ser.inference.predictor import EmotionClassifier

    shifted, _ = offset_speech
    classifier = EmotionClassifier.from_pretrained(tiny_cnn_dir, backend="torch")
    answer, report, _ = app.answer_clip(classifier, str(shifted), quality=QualityConfig(), confidence_threshold=0.0)
    assert report is not None and report.ok
    assert set(answer.probabilities) == set(classifier.labels)
