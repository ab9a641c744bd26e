"""app.py in-process: the handler over many formats / rates / layouts, bad input, the Blocks, the CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile
from conftest import synth_clip

import app
from ser.inference.predictor import EmotionClassifier

FORMATS = ("wav", "flac", "mp3", "ogg", "webm", "m4a")
# Formats libsndfile writes itself; the rest are encoded by ffmpeg (as a phone or browser would).
SOUNDFILE_FORMATS = {"wav", "flac"}
requires_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
CLIP_S = 1.5


@pytest.fixture(scope="module")
def classifier(tiny_cnn_dir) -> EmotionClassifier:
    return app.load_classifier(str(tiny_cnn_dir))


def make_clip(directory: Path, audio_format: str, sample_rate: int, channels: int) -> Path:
    """A CLIP_S-second clip in ``audio_format``; stereo channels differ so downmixing is exercised."""
    left = synth_clip(2, seed=sample_rate, duration_s=CLIP_S, sample_rate=sample_rate)
    samples = left if channels == 1 else np.stack([left, 0.5 * synth_clip(4, seed=1, duration_s=CLIP_S, sample_rate=sample_rate)], axis=1)
    source = directory / f"source_{sample_rate}_{channels}.wav"
    soundfile.write(str(source), samples, sample_rate)
    if audio_format == "wav":
        return source
    target = directory / f"clip_{sample_rate}_{channels}.{audio_format}"
    if audio_format in SOUNDFILE_FORMATS:
        soundfile.write(str(target), samples, sample_rate)
        return target
    # Opus (webm) only runs at 8/12/16/24/48 kHz; like browsers, let 44.1 kHz go to 48 kHz.
    rate_args = ["-ar", "48000"] if audio_format == "webm" and sample_rate == 44_100 else []
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), *rate_args, str(target)], check=True)
    return target


def clip_length_s(info: str) -> float:
    match = re.search(r"Clip length \*\*([0-9.]+) s\*\*", info)
    assert match, info
    return float(match.group(1))


@requires_ffmpeg
@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("sample_rate", [8_000, 44_100, 48_000])
@pytest.mark.parametrize("audio_format", FORMATS)
def test_handler_returns_a_distribution_over_the_model_labels(classifier, tmp_path, audio_format, sample_rate, channels):
    path = make_clip(tmp_path, audio_format, sample_rate, channels)

    probabilities, info = app.classify_clip(classifier, str(path))

    assert list(probabilities) == classifier.labels
    assert all(0.0 <= value <= 1.0 for value in probabilities.values())
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    # Lossy encoders pad a few ms; anything beyond 0.1 s would mean a wrong rate or channel layout.
    assert clip_length_s(info) == pytest.approx(CLIP_S, abs=0.1)
    assert re.search(r"model \*\*\d+ ms\*\*", info)
    # Same numbers as the shared loader + predictor used by evaluation.
    expected = classifier.classify_file(path).probabilities
    assert probabilities == pytest.approx(expected, abs=1e-9)


def test_labels_come_from_the_model_config(classifier, tiny_cnn_dir):
    import json

    id2label = json.loads((tiny_cnn_dir / "config.json").read_text())["id2label"]
    assert classifier.labels == [id2label[str(index)] for index in range(len(id2label))]


@pytest.mark.parametrize(
    ("content", "file_name", "message"),
    [
        (None, None, "No audio received"),
        (b"", "empty.wav", "empty file (0 bytes)"),
        (b"this is not audio at all" * 20, "notes.mp3", "Cannot decode notes.mp3"),
    ],
    ids=["no-audio", "zero-bytes", "not-audio"],
)
def test_bad_input_becomes_a_user_facing_gr_error(classifier, tmp_path, content, file_name, message):
    audio_path = None
    if file_name is not None:
        audio_path = tmp_path / file_name
        audio_path.write_bytes(content)
    with pytest.raises(gr.Error, match=re.escape(message)) as raised:
        app.classify_clip(classifier, None if audio_path is None else str(audio_path))
    if file_name is not None:
        assert "Accepted: wav, flac, mp3" in raised.value.message


def test_zero_sample_and_too_long_clips_are_refused(classifier, tmp_path):
    silent = tmp_path / "zero.wav"
    soundfile.write(str(silent), np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(gr.Error, match="empty"):
        app.classify_clip(classifier, str(silent))

    long_clip = tmp_path / "long.wav"
    soundfile.write(str(long_clip), synth_clip(0, seed=0, duration_s=3.0), 16_000)
    with pytest.raises(gr.Error, match=r"3\.0 s long; at most 2 s"):
        app.classify_clip(classifier, str(long_clip), max_duration_s=2.0)
    # The handler holds no state: the next good clip still works.
    probabilities, _ = app.classify_clip(classifier, str(long_clip), max_duration_s=None)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)


def test_examples_are_redistributable_clips_next_to_the_app(classifier):
    paths = [Path(path) for path in app.example_paths()]
    assert len(paths) >= 3
    for path in paths:
        assert path.parent == Path(app.__file__).resolve().parent / "examples"
        probabilities, info = app.classify_clip(classifier, str(path))
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert 1.0 < clip_length_s(info) < 10.0


def test_build_demo_exposes_the_documented_predict_and_timeline_endpoints(classifier):
    demo = app.build_demo(classifier)

    api = demo.get_api_info()
    assert list(api["named_endpoints"]) == ["/predict", "/predict_calibrated", "/timeline"]
    endpoint = api["named_endpoints"]["/predict"]
    assert [parameter["component"] for parameter in endpoint["parameters"]] == ["Audio"]
    assert [returned["component"] for returned in endpoint["returns"]] == ["Label", "Markdown", "Json"]
    calibrated = api["named_endpoints"]["/predict_calibrated"]
    assert [parameter["component"] for parameter in calibrated["parameters"]] == ["Audio", "Json"]
    assert [returned["component"] for returned in calibrated["returns"]] == ["Label", "Markdown", "Json", "Json"]

    labels = [block for block in demo.blocks.values() if isinstance(block, gr.Label)]
    assert [label.num_top_classes for label in labels] == [len(classifier.labels)] * 2  # clips, and live mode's
    assert [label.elem_id for label in labels] == [None, "live-bars"]
    audio = next(block for block in demo.blocks.values() if isinstance(block, gr.Audio))
    assert audio.type == "filepath"
    assert audio.sources == ["microphone", "upload"]
    assert demo._queue.max_size == app.DEFAULT_MAX_QUEUE_SIZE
    assert demo._queue.default_concurrency_limit == app.DEFAULT_CONCURRENCY_LIMIT


def test_module_level_demo_is_built_lazily_from_ser_model(monkeypatch, tmp_path, tiny_cnn_dir):
    monkeypatch.setattr("ser.inference.predictor.BUNDLED_MODEL_DIR", tmp_path / "not-trained-yet")
    monkeypatch.delenv("SER_MODEL", raising=False)
    app._configured_demo.cache_clear()
    try:
        with pytest.raises(app.ModelNotConfiguredError, match="--model"):
            app.demo  # noqa: B018  (the attribute access is what is being tested)

        monkeypatch.setenv("SER_MODEL", str(tiny_cnn_dir))
        demo = app.demo
        assert isinstance(demo, gr.Blocks)
        assert app.demo is demo  # built once
    finally:
        app._configured_demo.cache_clear()
    with pytest.raises(AttributeError):
        app.no_such_attribute  # noqa: B018


def test_cli_without_a_model_exits_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr("ser.inference.predictor.BUNDLED_MODEL_DIR", tmp_path / "not-trained-yet")
    monkeypatch.delenv("SER_MODEL", raising=False)
    monkeypatch.setattr("sys.argv", ["app.py"])
    with pytest.raises(SystemExit) as exited:
        app.main()
    message = str(exited.value.code)
    assert message.startswith("No model configured: pass --model PATH_OR_HUB_ID or set SER_MODEL")
    assert "\n" not in message


def test_cli_help_and_defaults(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["app.py", "--help"])
    with pytest.raises(SystemExit) as exited:
        app.main()
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--model", "--host", "--port", "--share", "--max_duration_s"):
        assert flag in help_text

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    defaults = app.AppArguments()
    assert (defaults.host, defaults.port, defaults.share) == ("127.0.0.1", 7860, False)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    assert (app.AppArguments().host, app.AppArguments().port) == ("0.0.0.0", 7861)
