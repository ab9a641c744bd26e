"""A live ``python app.py`` on 127.0.0.1: gradio_client, the documented curl/REST flow, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import soundfile
from conftest import synth_clip
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from ser.inference.predictor import EmotionClassifier

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


@pytest.fixture(scope="module")
def client(ungated_server_url) -> Client:
    return Client(ungated_server_url, verbose=False)


@pytest.fixture(scope="module")
def reference(tiny_cnn_dir) -> EmotionClassifier:
    """The same model in this process: the server must return exactly its numbers."""
    return EmotionClassifier.from_pretrained(str(tiny_cnn_dir))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("clips")
    wav = directory / "clip.wav"
    soundfile.write(str(wav), synth_clip(3, seed=7, duration_s=2.0, sample_rate=44_100), 44_100)
    paths = {"wav": wav}
    for audio_format in ("mp3", "webm"):
        paths[audio_format] = directory / f"clip.{audio_format}"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-ar", "48000", str(paths[audio_format])], check=True)
    (directory / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    paths["broken"] = directory / "broken.wav"
    return paths


def check_label_value(value: dict, expected: dict[str, float]) -> None:
    """The gr.Label value: the top label plus one confidence per model label, highest first."""
    confidences = {item["label"]: item["confidence"] for item in value["confidences"]}
    assert set(confidences) == set(expected)
    assert confidences == pytest.approx(expected, abs=1e-6)
    assert value["label"] == max(expected, key=expected.get)
    assert [item["confidence"] for item in value["confidences"]] == sorted(confidences.values(), reverse=True)
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("audio_format", ["wav", "mp3", "webm"])
def test_client_predict(client, reference, clips, audio_format):
    label_value, info, _ = client.predict(handle_file(str(clips[audio_format])), api_name="/predict")

    check_label_value(label_value, reference.classify_file(clips[audio_format]).probabilities)
    assert "Clip length **2.0" in info


def test_error_comes_back_as_an_error_and_the_server_keeps_serving(client, reference, clips):
    with pytest.raises(AppError, match=r"Cannot decode broken\.wav as audio .*Accepted: wav, flac, mp3"):
        client.predict(handle_file(str(clips["broken"])), api_name="/predict")
    with pytest.raises(AppError, match="No audio received"):
        client.predict(None, api_name="/predict")
    label_value, _, _ = client.predict(handle_file(str(clips["wav"])), api_name="/predict")
    check_label_value(label_value, reference.classify_file(clips["wav"]).probabilities)


def call_predict(server_url: str, data: list) -> tuple[str, object]:
    """README flow steps 2 and 3: POST /gradio_api/call/predict, then read the event stream."""
    started = requests.post(f"{server_url}/gradio_api/call/predict", json={"data": data}, timeout=30)
    started.raise_for_status()
    event_id = started.json()["event_id"]
    stream = requests.get(f"{server_url}/gradio_api/call/predict/{event_id}", timeout=60)
    stream.raise_for_status()
    # Server-sent events: "event: <name>\ndata: <json>\n\n"; the last one is the result.
    events = [block for block in stream.text.strip().split("\n\n") if block.startswith("event:")]
    name_line, data_line = events[-1].splitlines()[:2]
    return name_line.removeprefix("event:").strip(), json.loads(data_line.removeprefix("data:").strip())


def upload(server_url: str, path: Path) -> str:
    """README flow step 1: POST /gradio_api/upload -> the server-side path."""
    with open(path, "rb") as handle:
        response = requests.post(f"{server_url}/gradio_api/upload", files={"files": (path.name, handle)}, timeout=30)
    response.raise_for_status()
    (server_path,) = response.json()
    return server_path


def test_rest_flow_from_the_readme(ungated_server_url, reference, clips):
    server_path = upload(ungated_server_url, clips["mp3"])
    assert server_path.endswith("clip.mp3")

    event, data = call_predict(ungated_server_url, [{"path": server_path, "meta": {"_type": "gradio.FileData"}}])

    assert event == "complete"
    label_value, info, _ = data
    check_label_value(label_value, reference.classify_file(clips["mp3"]).probabilities)
    assert info.startswith("Clip length **2.0")


def test_rest_error_then_success(ungated_server_url, reference, clips):
    broken = upload(ungated_server_url, clips["broken"])
    event, data = call_predict(ungated_server_url, [{"path": broken, "meta": {"_type": "gradio.FileData"}}])
    assert event == "error"
    assert data["error"].startswith("Cannot decode broken.wav as audio")
    # The user sees the file name, never the server's upload folder.
    assert "/tmp" not in data["error"] and "gradio" not in data["error"]

    good = upload(ungated_server_url, clips["webm"])
    event, data = call_predict(ungated_server_url, [{"path": good, "meta": {"_type": "gradio.FileData"}}])
    assert event == "complete"
    check_label_value(data[0], reference.classify_file(clips["webm"]).probabilities)


def test_only_predict_and_timeline_are_public(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/predict", "/predict_calibrated", "/timeline"]
    assert api["unnamed_endpoints"] == {}
