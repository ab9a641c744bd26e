""""Calibrate to my voice": per-session statistics in gr.State, the /predict_calibrated API, and
that two browser sessions never see each other's statistics."""

from __future__ import annotations

import concurrent.futures
import json
import uuid

import gradio as gr
import numpy as np
import pytest
import requests
import soundfile
from conftest import synth_clip
from live_server import UNGATED_ARGS, file_data, rest_upload, running_app

import app
from ser.audio.loader import load_audio
from ser.core.statistics import EmbeddingStatistics
from ser.inference.adaptation import MIN_ADAPTATION_CLIPS
from ser.inference.predictor import EmotionClassifier
from ser.serving.calibration import Calibration, CalibrationError


@pytest.fixture(scope="module")
def classifier(tiny_whisper_ser_dir) -> EmotionClassifier:
    return EmotionClassifier.from_pretrained(tiny_whisper_ser_dir, backend="torch")


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> dict[str, list]:
    """Two 'voices' (low and high pitched synthetic clips), one clip more each than calibration needs."""
    root = tmp_path_factory.mktemp("voices")
    result = {}
    for offset, (name, classes) in enumerate((("low", (0, 1)), ("high", (4, 5)))):
        paths = []
        for index in range(MIN_ADAPTATION_CLIPS + 1):
            path = root / f"{name}{index}.wav"
            soundfile.write(str(path), synth_clip(classes[index % 2], seed=100 * offset + index, duration_s=1.0 + 0.05 * index), 16_000)
            paths.append(path)
        result[name] = paths
    return result


def _probabilities(answer: dict, labels) -> np.ndarray:
    return np.array([answer["probabilities"][label] for label in labels])


def test_calibrated_from_the_minimum_number_of_clips_on(classifier, voices):
    calibration = Calibration()
    waveforms = [load_audio(path) for path in voices["low"]]
    for index, path in enumerate(voices["low"]):
        answer, _, info, calibration = app.answer_clip_calibrated(classifier, str(path), calibration, confidence_threshold=0.0)
        assert calibration.clips == index + 1
        got = np.array([answer.probabilities[label] for label in classifier.labels])
        if index + 1 < MIN_ADAPTATION_CLIPS:
            assert not calibration.calibrated and "Not calibrated yet" in info and "uncalibrated" in info
            np.testing.assert_allclose(got, classifier.predict_proba([waveforms[index]])[0], atol=1e-6)
        else:
            assert calibration.calibrated and f"Calibrated to your voice** from your last {index + 1} clips" in info
            statistics = EmbeddingStatistics.of(classifier.embed_batch(waveforms[: index + 1]))
            np.testing.assert_allclose(got, classifier.predict_proba([waveforms[index]], statistics)[0], atol=1e-5)
    # What the client keeps is statistics only, and it round-trips through JSON.
    payload = json.loads(json.dumps(calibration.to_dict()))
    assert sorted(payload) == ["answers", "count", "mean", "sum_squares"]
    restored = Calibration.from_dict(payload, classifier.embedding_shape, num_labels=len(classifier.labels))
    assert restored.clips == len(voices["low"]) and restored.calibrated
    np.testing.assert_allclose(restored.answers.mean, calibration.answers.mean)


def test_ten_clips_of_one_emotion_are_no_voice_profile():
    """Clips whose uncalibrated answers one class dominates do not calibrate; the page and API say why,
    and clips in other moods make it calibrate again."""
    labels = ["angry", "sad", "happy"]
    calibration = Calibration(min_clips=4, capacity=10, max_dominant_share=0.6)
    rng = np.random.default_rng(0)
    for _ in range(5):
        calibration = calibration.add(rng.normal(0, 1, (2, 3)), np.array([0.1, 0.8, 0.1]))
    assert calibration.clips == 5 and calibration.too_uniform and not calibration.calibrated
    assert calibration.standardisation() is None
    assert calibration.dominant == (1, pytest.approx(0.8))
    assert "mostly sound sad (80% of their answers)" in calibration.describe(labels)
    assert calibration.summary(labels) | {} == {
        "calibrated": False, "clips": 5, "min_clips": 4, "capacity": 10, "answers_too_uniform": True,
        "dominant_answer": {"label": "sad", "share": 0.8},
    }  # fmt: skip
    for answer in ([0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]):
        calibration = calibration.add(rng.normal(0, 1, (2, 3)), np.array(answer))
    # Mean answer now (5 * 0.8 + 4 * 0.1) / 9 = 0.49 for sad: mixed enough.
    assert calibration.dominant[1] == pytest.approx(4.4 / 9) and calibration.calibrated
    assert calibration.standardisation() is calibration.statistics
    # Fewer clips than needed is "not yet", never "too uniform".
    few = Calibration(min_clips=4).add(np.zeros((2, 3)), np.array([0.0, 1.0, 0.0]))
    assert not few.too_uniform and "Not calibrated yet" in few.describe(labels)
    # The answers travel with the statistics and are checked like them.
    payload = calibration.to_dict()
    assert Calibration.from_dict(payload, (2, 3), num_labels=3).dominant == calibration.dominant
    with pytest.raises(CalibrationError, match="one probability per class"):
        Calibration.from_dict(payload, (2, 3), num_labels=6)
    with pytest.raises(CalibrationError, match="not one this app returned"):
        Calibration.from_dict(payload | {"answers": {"mean": [1.0]}}, (2, 3), num_labels=3)
    # An older client's value without answers still calibrates (uniformity unknown).
    legacy = {key: value for key, value in payload.items() if key != "answers"}
    assert Calibration.from_dict(legacy, (2, 3), min_clips=4).calibrated


def test_a_calibration_from_another_model_or_malformed_is_refused(classifier):
    with pytest.raises(CalibrationError, match="another model"):
        Calibration.from_dict(EmbeddingStatistics.of(np.ones((2, 3, 3))).to_dict(), classifier.embedding_shape)
    with pytest.raises(CalibrationError, match="send null"):
        Calibration.from_dict({"mean": "x"}, classifier.embedding_shape)
    assert Calibration.from_dict(None, classifier.embedding_shape).clips == 0


def test_a_model_without_an_embedding_cannot_be_calibrated(tiny_tdnn_dir, voices):
    tdnn = EmotionClassifier.from_pretrained(tiny_tdnn_dir, backend="torch")
    with pytest.raises(gr.Error, match="Calibration is not available"):
        app.answer_clip_calibrated(tdnn, str(voices["low"][0]), Calibration())
    demo = app.build_demo(tdnn, quality=None)
    checkbox = next(block for block in demo.blocks.values() if isinstance(block, gr.Checkbox) and block.label == "Calibrate to my voice")
    assert checkbox.interactive is False
    # no calibration state (live mode's sessions are kept by the app's LiveSessions, not in a gr.State)
    assert not [block for block in demo.blocks.values() if isinstance(block, gr.State)]
    live = next(block for block in demo.blocks.values() if isinstance(block, gr.Checkbox) and block.elem_id == "live-calibrate")
    assert live.interactive is False and live.value is False


# -- through a live server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_whisper_ser_dir, tmp_path_factory):
    with running_app(tiny_whisper_ser_dir, tmp_path_factory.mktemp("server") / "app.log", UNGATED_ARGS) as url:
        yield url


def _page_event(url: str, api_name: str) -> dict:
    config = requests.get(f"{url}/config", timeout=30).json()
    return next(dependency for dependency in config["dependencies"] if dependency.get("api_name") == api_name)


def _page_call(url: str, session: str, event: dict, data: list) -> list:
    """What the browser does for a page event: join the queue under the page's session hash, read the stream."""
    joined = requests.post(
        f"{url}/gradio_api/queue/join",
        json={"data": data, "fn_index": event["id"], "session_hash": session, "event_data": None, "trigger_id": event["targets"][0][0]},
        timeout=60,
    )
    joined.raise_for_status()
    with requests.get(f"{url}/gradio_api/queue/data", params={"session_hash": session}, stream=True, timeout=300) as stream:
        for line in stream.iter_lines():
            message = json.loads(line.removeprefix(b"data:")) if line.startswith(b"data:") else {}
            if message.get("msg") == "process_completed":
                assert message["success"], message
                return message["output"]["data"]
    raise AssertionError("the event stream ended without process_completed")


def test_two_concurrent_sessions_do_not_see_each_others_statistics(server, voices, classifier):
    submit = _page_event(server, "predict_in_page")
    sessions = {name: uuid.uuid4().hex[:11] for name in voices}

    def run_session(name: str) -> list[dict]:
        answers = []
        for path in voices[name]:
            uploaded = rest_upload(server, path).json()[0]
            # Inputs: the audio, the opt-in checkbox, the gr.State (the server fills it from this session).
            _, _, answer, _, _ = _page_call(server, sessions[name], submit, [file_data(uploaded), True, None])
            answers.append(answer)
        return answers

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(voices, pool.map(run_session, voices)))
    for name, answers in results.items():
        assert [answer["calibration"]["clips"] for answer in answers] == list(range(1, len(voices[name]) + 1))
        waveforms = [load_audio(path) for path in voices[name]]
        own = EmbeddingStatistics.of(classifier.embed_batch(waveforms))
        # The last answer is standardised with this session's own clips, not the other session's.
        np.testing.assert_allclose(_probabilities(answers[-1], classifier.labels), classifier.predict_proba(waveforms[-1:], own)[0], atol=1e-4)

    # Reset empties this session only.
    reset = next(
        dependency for dependency in requests.get(f"{server}/config", timeout=30).json()["dependencies"]
        if len(dependency["inputs"]) == 1 and len(dependency["outputs"]) == 2 and dependency.get("api_visibility") == "private"
    )
    _page_call(server, sessions["low"], reset, [True])
    low = _page_call(server, sessions["low"], submit, [file_data(rest_upload(server, voices["low"][0]).json()[0]), True, None])[2]
    high = _page_call(server, sessions["high"], submit, [file_data(rest_upload(server, voices["high"][0]).json()[0]), True, None])[2]
    assert low["calibration"]["clips"] == 1 and not low["calibration"]["calibrated"]
    assert high["calibration"]["clips"] == len(voices["high"]) + 1 and high["calibration"]["calibrated"]
    # Opted out: the uncalibrated answer, no calibration field, and nothing added.
    off = _page_call(server, sessions["high"], submit, [file_data(rest_upload(server, voices["high"][1]).json()[0]), False, None])[2]
    assert "calibration" not in off
    np.testing.assert_allclose(_probabilities(off, classifier.labels), classifier.predict_proba([load_audio(voices["high"][1])])[0], atol=1e-4)


def test_predict_calibrated_api_carries_the_calibration_between_calls(server, voices, classifier):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False)
    calibration = None
    for index, path in enumerate(voices["high"]):
        label, info, answer, calibration = client.predict(handle_file(str(path)), calibration, api_name="/predict_calibrated")
        dominant = answer["calibration"].pop("dominant_answer")
        assert answer["calibration"] == {
            "calibrated": index + 1 >= MIN_ADAPTATION_CLIPS, "clips": index + 1, "min_clips": MIN_ADAPTATION_CLIPS, "capacity": Calibration().capacity,
            "answers_too_uniform": False,
        }
        assert dominant["label"] in classifier.labels and 1 / len(classifier.labels) <= dominant["share"] <= 1
        assert set(calibration) == {"mean", "sum_squares", "count", "answers"}
    waveforms = [load_audio(path) for path in voices["high"]]
    own = EmbeddingStatistics.of(classifier.embed_batch(waveforms))
    np.testing.assert_allclose(_probabilities(answer, classifier.labels), classifier.predict_proba(waveforms[-1:], own)[0], atol=1e-4)
    # The plain /predict is unchanged by any of this.
    _, _, plain = client.predict(handle_file(str(voices["high"][0])), api_name="/predict")
    assert "calibration" not in plain
    np.testing.assert_allclose(_probabilities(plain, classifier.labels), classifier.predict_proba(waveforms[:1])[0], atol=1e-4)
    with pytest.raises(AppError, match="another model"):
        client.predict(handle_file(str(voices["high"][0])), EmbeddingStatistics.of(np.ones((2, 2))).to_dict(), api_name="/predict_calibrated")
