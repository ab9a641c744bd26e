"""Live mode through the real server over HTTP (Gradio 6's streaming protocol, as the page speaks
it: ser.serving.devserver.LiveStreamClient): sessions at once keep separate recordings and
calibrations, silence is "listening…", and a recording that reaches the time limit ends with a
message and is scored whole. espeak-ng speech, so the VAD hears speech; a tiny adaptable model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from live_server import UNGATED_ARGS, running_app

from ser.audio.loader import resample
from ser.serving.devserver import LiveStreamClient

RATE = 48_000


@pytest.fixture(scope="module")
def speech_48k(espeak_speech) -> np.ndarray:
    samples, rate = espeak_speech("The quick brown fox jumps over the lazy dog, then it runs far away into the quiet forest.")
    audio = resample(samples, rate, RATE)
    audio = np.concatenate([audio, audio])
    return np.round(audio / np.abs(audio).max() * 0.25 * 32767).astype(np.int16)


def statuses(client: LiveStreamClient, index: int = 1) -> list[str]:
    return [outputs[index] for _, outputs in client.updates if isinstance(outputs[index], str)]


def play(client: LiveStreamClient, pcm: np.ndarray, results: dict, key: str) -> None:
    client.play(pcm, RATE)
    results[key] = client.stop()


def test_sessions_keep_separate_recordings_and_calibrations(tiny_whisper_ser_dir, speech_48k, tmp_path):
    with running_app(tiny_whisper_ser_dir, tmp_path / "app.log", UNGATED_ARGS, {"GRADIO_TEMP_DIR": str(tmp_path / "gradio")}) as url:
        clients = {"long": LiveStreamClient(url, calibrate=True), "short": LiveStreamClient(url, calibrate=False), "silent": LiveStreamClient(url)}
        audio = {"long": speech_48k[: 7 * RATE], "short": speech_48k[: 3 * RATE], "silent": np.zeros(2 * RATE, np.int16)}
        results: dict = {}
        threads = [threading.Thread(target=play, args=(clients[key], audio[key], results, key)) for key in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        stop_text = {key: results[key]["output"]["data"][0] for key in clients}
        assert "Whole recording (7.0 s)" in stop_text["long"]
        assert "Whole recording (3.0 s)" in stop_text["short"]
        assert any(status.startswith("**Live:") for status in statuses(clients["long"]))
        assert any(status.startswith("**Live:") for status in statuses(clients["short"]))
        # the calibrating session counted its own speech windows; the other one none
        assert "on, collecting" in statuses(clients["long"], 3)[-1] and "(0 of" not in statuses(clients["long"], 3)[-1]
        assert "**off**" in statuses(clients["short"], 3)[-1] and "0 windows kept" in statuses(clients["short"], 3)[-1]
        # silence: "listening…", never an emotion; Stop refuses nothing here (gate off) but has no speech timeline
        silent = statuses(clients["silent"])
        assert silent and all(status.startswith("**listening…**") for status in silent)
    left = [path for path in (tmp_path / "gradio").rglob("*.wav") if path.parent.parent == tmp_path / "gradio" and "audio" in path.name]
    assert left == [], "streamed slices must be deleted once read"


def test_time_limit_ends_the_recording_with_a_message(tiny_whisper_ser_dir, speech_48k, tmp_path):
    with running_app(tiny_whisper_ser_dir, tmp_path / "app.log", (*UNGATED_ARGS, "--live_max_duration_s", "2")) as url:
        client = LiveStreamClient(url)
        client.play(speech_48k[: 4 * RATE], RATE)
        messages = statuses(client)
        limit = [index for index, status in enumerate(messages) if status.startswith("**Time limit reached**")]
        assert len(limit) == 1 and limit[0] == len(messages) - 1, messages  # later slices are ignored
        signal = [outputs[4] for _, outputs in client.updates if isinstance(outputs[4], (int, float))]
        assert len(signal) == 1, "the page is told once to press Stop"
        stop = client.stop()
        assert "Whole recording (2.0 s)" in stop["output"]["data"][0]


def test_a_model_that_cannot_adapt_runs_live_uncalibrated(tiny_cnn_dir, speech_48k, tmp_path):
    with running_app(tiny_cnn_dir, tmp_path / "app.log", UNGATED_ARGS) as url:
        client = LiveStreamClient(url, calibrate=True)
        client.play(speech_48k[: 3 * RATE], RATE)
        stop = client.stop()
    voiced = [status for status in statuses(client) if status.startswith("**Live:")]
    assert voiced and all("uncalibrated" in status for status in voiced)
    assert "not available with this model" in statuses(client, 3)[-1]
    assert "Whole recording (3.0 s)" in stop["output"]["data"][0] and "uncalibrated" in stop["output"]["data"][0]
