"""Live sessions are freed on every path (Stop, a Stop that fails, the time limit, a closed tab, a
dropped connection), refusals are one log line while server errors keep their traceback and give the
user a reference, and live mode shows in /metrics and /health."""

from __future__ import annotations

import logging
import time

import gradio as gr
import numpy as np
import pytest
import requests
from live_server import PageRequest, file_data, live_handlers, rest_call, rest_upload, running_app
from test_operations import scrape

from ser.audio.loader import resample
from ser.inference.predictor import EmotionClassifier
from ser.serving.devserver import LiveStreamClient
from ser.serving.guard import RequestGuard
from ser.serving.limits import ServerError
from ser.serving.live import live_step
from ser.serving.live_panel import LiveHandlers
from ser.serving.monitoring import AppMetrics, ClassPrior
from ser.serving.uploads import UploadRegistry

RATE = 16_000


class BrokenClassifier:
    """The tiny model, except that scoring a whole recording fails (a server-side bug)."""

    def __init__(self, classifier: EmotionClassifier):
        self._classifier = classifier

    def __getattr__(self, name):
        return getattr(self._classifier, name)

    def classify_waveform(self, waveform, statistics=None):
        raise RuntimeError("a bug in the model step")


@pytest.fixture(scope="module")
def classifier(tiny_whisper_classifier) -> EmotionClassifier:
    return tiny_whisper_classifier


@pytest.fixture(scope="module")
def speech_16k(espeak_speech) -> np.ndarray:
    samples, rate = espeak_speech("The quick brown fox jumps over the lazy dog, then it runs far away into the quiet forest.")
    return resample(samples, rate, RATE).astype(np.float32)


def handlers_for(classifier, max_duration_s: float = 60.0) -> LiveHandlers:
    return live_handlers(classifier, max_duration_s)


def ended(handlers: LiveHandlers, how: str) -> float:
    return handlers.metrics.registry.get_sample_value("ser_live_recordings_ended_total", {"how": how})


def test_stop_frees_the_recording_and_keeps_the_calibration(classifier, speech_16k):
    live, page = handlers_for(classifier), PageRequest("stop")
    session = live.sessions.get(page.session_hash)
    session.append(speech_16k, RATE)
    assert session.recording_now and live.sessions.recording() == 1
    text, figure = live.stop(False, page)
    assert text.startswith("**Whole recording") and figure is not None
    assert not session.recording_now and live.sessions.recording() == 0
    assert len(live.sessions) == 1  # the session (and its calibration) stays until the page closes
    assert ended(live, "stop") == 1


def test_a_stop_that_fails_frees_the_recording_and_names_a_reference(classifier, speech_16k, caplog):
    live, page = handlers_for(BrokenClassifier(classifier)), PageRequest("broken")
    session = live.sessions.get(page.session_hash)
    session.append(speech_16k, RATE)
    with caplog.at_level(logging.INFO, logger="ser.serving.guard"), pytest.raises(gr.Error) as raised:
        live.stop(False, page)
    assert "went wrong on the server's side (reference " in raised.value.message and "not with your audio" in raised.value.message
    assert raised.value.print_exception is False  # the guard logged it once, with its traceback
    [record] = [record for record in caplog.records if record.levelno == logging.ERROR]
    reference = raised.value.message.split("reference ")[1][:8]
    assert reference in record.getMessage() and record.exc_info and "a bug in the model step" in str(record.exc_info[1])
    assert not session.recording_now and live.sessions.recording() == 0
    assert ended(live, "stop_failed") == 1


def test_the_time_limit_ends_the_recording_and_a_closed_page_frees_it(classifier, speech_16k):
    live, page = handlers_for(classifier, max_duration_s=2.0), PageRequest("limit")
    session = live.sessions.get(page.session_hash)
    kinds = [live_step(classifier, live.detector, session, speech_16k[start : start + RATE // 2], RATE, False).kind for start in range(0, 3 * RATE, RATE // 2)]
    assert "limit" in kinds and kinds[-1] == "ignored"
    assert session.recording_now  # ended, waiting for the page's Stop ...
    live.closed(page)  # ... which never comes: the tab was closed
    assert not session.recording_now and len(live.sessions) == 0
    assert ended(live, "closed") == 1
    live.closed(page)  # a second unload is harmless
    assert ended(live, "closed") == 1


def test_refusals_are_one_log_line_and_server_errors_keep_their_traceback(tmp_path, caplog):
    labels = ["angry", "sad"]
    metrics = AppMetrics(labels, ClassPrior({label: 0.5 for label in labels}, "uniform (test)"), 0.5)
    guard = RequestGuard(metrics, UploadRegistry(tmp_path), timeout_s=30, workers=1, user_errors=(gr.Error,))

    def refuse():
        raise gr.Error("Only 0.48 s of speech was detected in 1.8 s of audio.", print_exception=False)

    def crash():
        raise KeyError("bug")

    with caplog.at_level(logging.INFO, logger="ser.serving.guard"):
        with pytest.raises(gr.Error):
            guard.run(None, refuse, lambda result: result)
        with pytest.raises(ServerError) as server_error:
            guard.run(None, crash, lambda result: result)
    refused, failed = caplog.records
    assert refused.levelno == logging.INFO and refused.exc_info is None and "Only 0.48 s of speech" in refused.getMessage()
    assert failed.levelno == logging.ERROR and failed.exc_info is not None and server_error.value.reference in failed.getMessage()
    assert metrics.registry.get_sample_value("ser_rejected_inputs_total", {"reason": "user_error"}) == 1
    assert metrics.registry.get_sample_value("ser_requests_total", {"outcome": "error"}) == 1


# -- over HTTP ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gated_server(tiny_whisper_ser_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("live_sessions_server")
    log_path = root / "app.log"
    with running_app(tiny_whisper_ser_dir, log_path, ("--confidence_threshold", "0"), {"GRADIO_TEMP_DIR": str(root / "gradio")}) as url:
        yield url, log_path, root / "gradio"


def live_health(url: str) -> dict:
    return requests.get(f"{url}/health", timeout=10).json()["live_sessions"]


def test_a_dropped_connection_frees_its_live_session(gated_server, speech_16k):
    url, _, upload_dir = gated_server
    assert live_health(url) == {"recording": 0, "limit": 4}
    pcm = np.round(resample(speech_16k, RATE, 48_000) * 0.25 / np.abs(speech_16k).max() * 32767).astype(np.int16)
    client = LiveStreamClient(url)
    client.open_heartbeat()
    # 3 s sent faster than real time: Gradio keeps only the newest slice waiting for the handler,
    # so some slices are uploaded and never read; they must not stay on disk either.
    for start in range(0, 3 * 48_000, 24_000):
        client.send(pcm[start : start + 24_000], 48_000)
    deadline = time.monotonic() + 30
    while not (client.updates and live_health(url)["recording"] == 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let the newest slice be read
    assert live_health(url)["recording"] == 1
    client.drop()  # no Stop: the tab is gone
    deadline = time.monotonic() + 30
    while live_health(url)["recording"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_health(url)["recording"] == 0
    metrics = scrape(url)
    assert metrics[("ser_live_recordings_ended_total", (("how", "closed"),))] == 1
    assert metrics[("ser_live_updates_total", (("kind", "voiced"),))] >= 1
    assert metrics[("ser_live_update_seconds_count", ())] == sum(
        value for (name, _), value in metrics.items() if name == "ser_live_updates_total"
    )
    assert metrics[("ser_live_sessions_open", ())] == 0
    assert not list(upload_dir.rglob("audio.wav"))  # every slice deleted, read or not (the example clips stay)


def test_a_refusal_is_one_log_line_without_a_traceback(gated_server, tmp_path):
    import soundfile

    url, log_path, _ = gated_server
    quiet = tmp_path / "quiet_refusal.wav"
    soundfile.write(str(quiet), np.zeros(RATE * 2, np.float32), RATE)
    status, event, data = rest_call(url, [file_data(rest_upload(url, quiet).json()[0])])
    assert event == "error" and "silent" in data["error"].lower()
    time.sleep(0.5)
    lines = [line for line in log_path.read_text().splitlines() if "quiet_refusal.wav" in line]
    assert len(lines) == 1 and "Refused quiet_refusal.wav (" in lines[0], lines
    assert "Traceback" not in log_path.read_text()
    assert scrape(url)[("ser_rejected_inputs_total", (("reason", "silent"),))] == 1


def test_a_closed_page_frees_gradio_state_of_it_too(classifier):
    from gradio.state_holder import StateHolder

    from ser.serving.page_sessions import forget_gradio_session

    with gr.Blocks() as demo:
        gr.State(None)
    holder = StateHolder()
    holder.set_blocks(demo)  # what the server does at launch
    holder["page-1"], holder["page-2"]  # noqa: B018  (first access creates each page's state)
    assert forget_gradio_session(demo, "page-1") is True
    assert "page-1" not in holder and "page-2" in holder
    assert forget_gradio_session(demo, "page-1") is False


def test_malloc_is_tuned_where_the_c_library_is_glibc():
    import platform

    from ser.inference.hardware import tune_malloc_for_serving

    assert tune_malloc_for_serving() is (platform.libc_ver()[0] == "glibc")
