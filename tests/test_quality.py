"""The quality gate (ser.inference.quality): generated silence, noise, clipping, short clips and espeak-ng speech."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_RATE, write_clip

from ser.audio.loader import AudioError, load_audio
from ser.inference.quality import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    Answer,
    ProblemCode,
    QualityConfig,
    UnusableAudioError,
    assess_quality,
    check_quality,
    coverage_curve,
    decide,
    get_speech_detector,
    is_uncertain,
)

SENTENCE = "The weather was lovely this morning, so we walked along the river for an hour."


@pytest.fixture(scope="module")
def speech(espeak_speech) -> np.ndarray:
    """About 4.5 s of espeak-ng speech at the project's rate, through the shared loader."""
    samples, sample_rate = espeak_speech(SENTENCE)
    from ser.audio.loader import prepare_waveform

    return prepare_waveform(samples, sample_rate)


def sine(amplitude: float, duration_s: float = 2.0, frequency_hz: float = 220.0) -> np.ndarray:
    time = np.arange(int(duration_s * SAMPLE_RATE)) / SAMPLE_RATE
    return np.clip(amplitude * np.sin(2 * np.pi * frequency_hz * time), -1.0, 1.0).astype(np.float32)


def test_speech_passes_and_is_measured(speech):
    report = check_quality(speech, SAMPLE_RATE)
    assert report.ok and report.problems == [] and report.codes == []
    assert report.duration_s == pytest.approx(len(speech) / SAMPLE_RATE)
    # espeak leaves ~0.1 s of silence at each end; its short pauses between words are bridged.
    assert report.duration_s - 1.0 < report.speech_s <= report.duration_s
    assert report.speech_segments[0][0] < 0.3 and report.speech_segments[-1][1] > report.duration_s - 0.4
    assert -30 < report.rms_dbfs < -10
    assert report.clipped_fraction < 0.001


def test_digital_silence_is_reported_as_silent():
    report = assess_quality(np.zeros(2 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    assert report.codes == ["silent"]
    assert report.speech_s == 0.0 and report.speech_segments == []
    assert report.rms_dbfs == -120.0
    assert report.problems[0].message == (
        "The clip is silent (level -120 dBFS, below -60 dBFS). Check the microphone; at least 0.5 s of speech is needed."
    )


def test_white_noise_has_no_speech():
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32)
    report = assess_quality(noise, SAMPLE_RATE)
    assert report.codes == ["no_speech"]
    assert report.rms_dbfs == pytest.approx(-20.0, abs=0.1)
    assert "No speech was detected in 3.0 s of audio (level -20 dBFS)" in report.problems[0].message


def test_clipped_sine_is_reported_with_its_clipped_share():
    clipped = sine(amplitude=2.0)
    expected = np.mean(np.abs(clipped) >= 0.999)
    report = assess_quality(clipped, SAMPLE_RATE)
    assert "clipped" in report.codes
    assert report.clipped_fraction == pytest.approx(expected)
    assert 0.6 < report.clipped_fraction < 0.7  # |2 sin| >= 1 for two thirds of each period
    message = next(problem.message for problem in report.problems if problem.code is ProblemCode.CLIPPED)
    assert message.startswith(f"{expected:.1%} of the samples are clipped") and "at most 1.0% is accepted" in message
    # The same tone below full scale is not clipped (a tone is still not speech).
    assert assess_quality(sine(amplitude=0.5), SAMPLE_RATE).codes == ["no_speech"]


def test_clipped_speech_is_still_speech_but_refused(speech):
    clipped = np.clip(speech * 8, -1, 1)
    report = assess_quality(clipped, SAMPLE_RATE)
    assert report.codes == ["clipped"]
    assert report.speech_s > 2.0


def test_clipping_threshold_is_configurable():
    barely = sine(amplitude=1.02)  # ~12% of samples at full scale
    assert "clipped" in assess_quality(barely, SAMPLE_RATE).codes
    assert "clipped" not in assess_quality(barely, SAMPLE_RATE, QualityConfig(max_clipped_fraction=0.2)).codes


def test_a_fifth_of_a_second_is_too_short(speech):
    report = assess_quality(speech[int(0.5 * SAMPLE_RATE) : int(0.7 * SAMPLE_RATE)], SAMPLE_RATE)
    assert report.codes == ["too_short"]
    assert report.problems[0].message == "The clip is only 0.20 s long; at least 0.5 s of speech is needed."


def test_too_little_speech_in_a_longer_clip_is_too_short(speech):
    # ~4 s of speech in 6.5 s: long enough a clip, not enough speech for min_speech_s=5.
    padded = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)])
    report = assess_quality(padded, SAMPLE_RATE, QualityConfig(min_speech_s=5.0))
    assert report.duration_s > 5.0 and report.speech_s < 5.0
    assert report.codes == ["too_short"]
    assert report.problems[0].message.startswith(f"Only {report.speech_s:.2f} s of speech was detected in {report.duration_s:.1f} s")


def test_quiet_speech_that_the_vad_hears_is_not_silent(speech):
    quiet = assess_quality(speech * 10 ** (-45 / 20), SAMPLE_RATE)  # about -65 dBFS
    assert quiet.rms_dbfs < -60 and quiet.speech_s > 1.0 and quiet.ok
    # 15 dB further down the VAD hears nothing: now it is silence.
    inaudible = assess_quality(speech * 10 ** (-60 / 20), SAMPLE_RATE)
    assert inaudible.speech_s == 0.0 and inaudible.codes == ["silent"]


def test_too_long_is_refused_without_running_the_vad(speech):
    long_clip = np.tile(speech, 20)
    report = assess_quality(long_clip, SAMPLE_RATE, QualityConfig(max_duration_s=30.0))
    assert report.codes == ["too_long"]
    assert report.speech_s is None and report.speech_segments == []
    assert report.problems[0].message.startswith(f"The recording is {len(long_clip) / SAMPLE_RATE:.1f} s long; one answer is given for at most 30 s.")
    assert assess_quality(long_clip, SAMPLE_RATE, QualityConfig(max_duration_s=None)).ok


def test_check_quality_raises_a_typed_audio_error_with_the_report():
    with pytest.raises(UnusableAudioError) as caught:
        check_quality(np.zeros(SAMPLE_RATE // 10, dtype=np.float32), SAMPLE_RATE)
    assert isinstance(caught.value, AudioError)  # existing `except AudioError` edges show it to users
    assert caught.value.report.codes == ["too_short", "silent"]
    assert str(caught.value) == caught.value.report.message
    data = json.loads(json.dumps(caught.value.report.to_dict()))
    assert data["ok"] is False and [problem["code"] for problem in data["problems"]] == ["too_short", "silent"]
    assert set(data) == {"duration_s", "speech_s", "clipped_fraction", "rms_dbfs", "speech_segments", "problems", "ok"}


def test_speech_between_silences_is_located(speech, tmp_path):
    # speech + 2 s silence + speech, through a 44.1 kHz file (the loader resamples): no speech in the gap.
    gap_s = 2.0
    recording = np.concatenate([speech, np.zeros(int(gap_s * SAMPLE_RATE), np.float32), speech])
    path = write_clip(tmp_path / "two.wav", load_audio_at(recording, 44_100), 44_100)
    waveform = load_audio(path)
    report = check_quality(waveform, SAMPLE_RATE)
    first_end = len(speech) / SAMPLE_RATE
    for start, end in report.speech_segments:
        assert end <= first_end + 0.2 or start >= first_end + gap_s - 0.2, (start, end)
    assert report.speech_segments[0][0] < 0.3 and report.speech_segments[-1][1] > report.duration_s - 0.4


def load_audio_at(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    from ser.audio.loader import resample

    return resample(samples, SAMPLE_RATE, sample_rate)


def test_vad_is_loaded_once_and_leaves_torch_threads_alone():
    import subprocess
    import sys

    from conftest import REPO_ROOT

    detector = get_speech_detector()
    assert get_speech_detector() is detector
    # Importing silero_vad sets torch to one thread; only a fresh process shows whether that is undone.
    probe = "import torch; torch.set_num_threads(2); from ser.inference.quality import get_speech_detector; get_speech_detector(); print(torch.get_num_threads())"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert result.stdout.strip() == "2"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # silero's own importlib.resources notice
def test_streamed_vad_matches_silero_on_the_whole_clip(speech):
    detector = get_speech_detector()  # first, so importing silero_vad cannot change torch's threads
    from silero_vad import load_silero_vad

    reference = load_silero_vad(sequence=True).audio_forward(speech)
    assert np.array_equal(detector.speech_probabilities(speech), reference)
    for block in (100, 512, 777, 20_000):
        stream = detector.stream()
        streamed = [stream.feed(speech[start : start + block]) for start in range(0, len(speech), block)]
        assert np.array_equal(np.concatenate([*streamed, stream.finish()]), reference), block
        assert stream.num_samples == len(speech)


def test_file_through_the_shared_loader(speech, tmp_path):
    path = write_clip(tmp_path / "speech.flac", speech)
    assert check_quality(load_audio(path), SAMPLE_RATE).ok


# -- confidence ---------------------------------------------------------------------------------
def test_exactly_at_the_threshold_is_certain():
    assert is_uncertain(0.5, 0.5) is False
    assert is_uncertain(np.nextafter(0.5, 0), 0.5) is True
    assert is_uncertain(0.0, 0.0) is False  # threshold 0 keeps everything
    answer = decide({"angry": 0.5, "sad": 0.3, "happy": 0.2}, threshold=0.5)
    assert answer == Answer("angry", 0.5, False, 0.5, {"angry": 0.5, "sad": 0.3, "happy": 0.2})
    assert decide({"angry": 0.49, "sad": 0.31, "happy": 0.2}, threshold=0.5).uncertain is True


def test_answer_shape_is_stable():
    answer = decide({"angry": 0.2, "sad": 0.7, "happy": 0.1}, threshold=0.8)
    assert answer.to_dict() == {
        "label": "sad",
        "confidence": 0.7,
        "uncertain": True,
        "confidence_threshold": 0.8,
        "probabilities": {"angry": 0.2, "sad": 0.7, "happy": 0.1},
    }
    json.dumps(answer.to_dict())
    with pytest.raises(ValueError):
        decide({})


def test_coverage_curve_counts_kept_answers_and_their_accuracy():
    confidences = [0.9, 0.8, 0.6, 0.5, 0.3]
    correct = [True, True, False, True, False]
    rows = coverage_curve(confidences, correct, thresholds=[0.0, 0.5, 0.55, 0.85, 0.95])
    assert rows == [
        {"threshold": 0.0, "coverage": 1.0, "accuracy": 0.6, "n_kept": 5},
        {"threshold": 0.5, "coverage": 0.8, "accuracy": 0.75, "n_kept": 4},
        {"threshold": 0.55, "coverage": 0.6, "accuracy": pytest.approx(2 / 3), "n_kept": 3},
        {"threshold": 0.85, "coverage": 0.2, "accuracy": 1.0, "n_kept": 1},
        {"threshold": 0.95, "coverage": 0.0, "accuracy": None, "n_kept": 0},
    ]
    default = coverage_curve(confidences, correct)
    assert [row["threshold"] for row in default][:3] == [0.0, 0.05, 0.1] and default[-1]["threshold"] == 1.0
    with pytest.raises(ValueError):
        coverage_curve([0.5], [True, False])


# -- the app edge ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_classifier(tiny_cnn_dir):
    import app

    return app.load_classifier(str(tiny_cnn_dir))


def test_app_refuses_unusable_clips_with_the_gate_message(app_classifier, speech, tmp_path):
    import gradio as gr
    from conftest import synth_clip

    import app

    tone = write_clip(tmp_path / "tone.wav", synth_clip(2, seed=1, duration_s=2.0))
    quiet = write_clip(tmp_path / "quiet.wav", np.zeros(2 * SAMPLE_RATE, dtype=np.float32))
    with pytest.raises(gr.Error) as raised:
        app.answer_clip(app_classifier, str(tone), quality=QualityConfig())
    assert raised.value.message.startswith("No speech was detected in 2.0 s of audio (level -20 dBFS)")
    with pytest.raises(gr.Error) as raised:
        app.answer_clip(app_classifier, str(quiet), quality=QualityConfig())
    assert raised.value.message.startswith("The clip is silent (level -120 dBFS, below -60 dBFS)")
    # Without the gate (quality=None) the same tone gets an answer.
    answer, report, _ = app.answer_clip(app_classifier, str(tone), quality=None)
    assert report is None and sum(answer.probabilities.values()) == pytest.approx(1.0)


def test_app_answer_payload_and_uncertain_headline(app_classifier, speech, tmp_path):
    import gradio as gr

    import app

    path = write_clip(tmp_path / "speech.flac", speech)
    answer, report, info = app.answer_clip(app_classifier, str(path), quality=QualityConfig(), confidence_threshold=1.0)
    assert answer.uncertain and report.ok
    payload = app.api_payload(answer, report)
    assert list(payload) == ["label", "confidence", "uncertain", "confidence_threshold", "probabilities", "quality"]
    assert payload["confidence_threshold"] == 1.0 and payload["label"] == max(answer.probabilities, key=answer.probabilities.get)
    assert payload["quality"]["ok"] is True and payload["quality"]["speech_s"] == report.speech_s
    json.dumps(payload)
    assert f"**Uncertain:** the most likely class, {answer.label}, has {answer.confidence:.0%}, below the 100%" in info
    # The gr.Label headline says "uncertain" and still carries every class's bar.
    shown = gr.Label(num_top_classes=len(app_classifier.labels)).postprocess(app.label_value(answer, app.LabelFiles()))
    assert shown.label == app.UNCERTAIN_LABEL
    assert {item.label: item.confidence for item in shown.confidences} == answer.probabilities
    # At threshold 0 nothing is uncertain and the headline is the top class.
    certain, _, info = app.answer_clip(app_classifier, str(path), quality=QualityConfig(), confidence_threshold=0.0)
    assert not certain.uncertain and "Uncertain" not in info
    assert gr.Label().postprocess(app.label_value(certain, app.LabelFiles())).label == certain.label


def test_app_cli_exposes_gate_and_threshold(monkeypatch, capsys):
    import app

    monkeypatch.setattr("sys.argv", ["app.py", "--help"])
    with pytest.raises(SystemExit):
        app.main()
    help_text = capsys.readouterr().out
    for flag in ("--quality_gate", "--min_speech_s", "--confidence_threshold"):
        assert flag in help_text
    defaults = app.AppArguments()
    assert (defaults.quality_gate, defaults.min_speech_s, defaults.confidence_threshold) == (True, 0.5, DEFAULT_CONFIDENCE_THRESHOLD)


# -- evaluation: what the gate would refuse, accuracy vs coverage, noise ----------------------------
@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory, speech) -> Path:
    """AESDD layout: 2 speech clips, 2 white-noise clips and 1 silent clip."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(5)
    write_clip(root / "anger" / "a01 (1).wav", speech)
    write_clip(root / "sadness" / "s01 (1).wav", speech[: int(2.5 * SAMPLE_RATE)])
    write_clip(root / "fear" / "f01 (1).wav", (0.1 * rng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32))
    write_clip(root / "fear" / "f02 (1).wav", (0.05 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32))
    write_clip(root / "happiness" / "h01 (1).wav", np.zeros(2 * SAMPLE_RATE, dtype=np.float32))
    return root


def test_evaluation_reports_gate_coverage_and_noise(mixed_corpus, tiny_cnn_dir, tmp_path):
    import csv

    import evaluate_crosslingual

    output_dir = tmp_path / "eval"
    metrics = evaluate_crosslingual.main(
        ["--model", str(tiny_cnn_dir), "--data_dir", str(mixed_corpus), "--output_dir", str(output_dir),
         "--bootstrap_resamples", "20", "--progress", "false", "--snr_db", "20,0", "--batch_size", "2"]
    )  # fmt: skip
    assert metrics["n"] == 5  # nothing dropped
    gate = metrics["quality_gate"]
    assert (gate["n_checked"], gate["n_passed"], gate["n_refused"]) == (5, 2, 3)
    assert gate["by_reason"] == {"no_speech": 2, "silent": 1}
    assert sorted(Path(entry["path"]).name for entry in gate["refused"]) == ["f01 (1).wav", "f02 (1).wav", "h01 (1).wav"]

    rows = list(csv.DictReader((output_dir / "coverage.csv").open()))
    assert len(rows) == 21 and rows[0]["threshold"] == "0.00" and float(rows[0]["coverage"]) == 1.0
    assert float(rows[0]["accuracy"]) == pytest.approx(metrics["accuracy"])
    assert [float(row["coverage"]) for row in rows] == sorted((float(row["coverage"]) for row in rows), reverse=True)
    assert (output_dir / "coverage.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics["coverage"][10]["threshold"] == 0.5 and metrics["confidence_threshold"] == DEFAULT_CONFIDENCE_THRESHOLD

    noise = metrics["noise_robustness"]
    assert [row["snr_db"] for row in noise["rows"]] == [None, 20.0, 0.0]
    assert noise["rows"][0]["accuracy"] == metrics["accuracy"] and all(row["n"] == 5 for row in noise["rows"])
    report = (output_dir / "report.md").read_text()
    for heading in ("### Quality gate", "| 5 | 3 | no_speech: 2, silent: 1 |", "### Accuracy vs coverage", f"{DEFAULT_CONFIDENCE_THRESHOLD:.2f} (default)", "### Noise robustness", "| clean |", "| 20 |"):
        assert heading in report, heading
    on_disk = json.loads((output_dir / "metrics.json").read_text())
    assert on_disk["quality_gate"]["by_reason"] == gate["by_reason"] and len(on_disk["coverage"]) == 21


def test_noise_is_reproducible_and_independent_of_batching(mixed_corpus, tiny_cnn_dir):
    from ser.evaluation.inference import run_inference
    from ser.evaluation.robustness import noise_robustness
    from ser.evaluation.selection import select_clips
    from ser.inference.predictor import EmotionClassifier

    classifier = EmotionClassifier.from_pretrained(tiny_cnn_dir, backend="torch")
    clips = select_clips(mixed_corpus, classifier.labels).clips
    clean = run_inference(classifier, clips, progress=False)
    first = noise_robustness(classifier, clean.clips, [5.0], clean.probabilities, classifier.labels, batch_size=1, seed=3, progress=False)
    again = noise_robustness(classifier, clean.clips, [5.0], clean.probabilities, classifier.labels, batch_size=4, seed=3, progress=False)
    assert first == again
    assert run_inference(classifier, clips, progress=False).quality_codes is None


def test_evaluation_rejects_a_bad_snr_list(mixed_corpus, tiny_cnn_dir, tmp_path):
    import evaluate_crosslingual

    with pytest.raises(SystemExit, match="--snr_db"):
        evaluate_crosslingual.main(["--model", str(tiny_cnn_dir), "--data_dir", str(mixed_corpus), "--output_dir", str(tmp_path), "--snr_db", "20,loud"])
