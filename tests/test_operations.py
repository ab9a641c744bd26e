"""Operating the Space: limits, upload deletion (privacy), refused payloads, /metrics and /health."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import pytest
import requests
from conftest import REPO_ROOT
from gradio_client import Client, handle_file
from live_server import file_data, rest_call, rest_upload, running_app
from prometheus_client.parser import text_string_to_metric_families

import app
from ser.serving.guard import RequestGuard, rejection_reason
from ser.serving.limits import RequestTimeoutError, env_default
from ser.serving.monitoring import (
    AppMetrics,
    ClassPrior,
    kl_divergence,
    load_class_prior,
)
from ser.serving.payload import Endpoint, check_body
from ser.serving.uploads import UploadRegistry

LABELS = ["angry", "happy", "sad"]
requires_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


# -- units -------------------------------------------------------------------------------------


def test_kl_divergence():
    prior = {"angry": 0.5, "happy": 0.25, "sad": 0.25}
    assert kl_divergence({"angry": 2, "happy": 1, "sad": 1}, prior) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence({}, prior) == 0.0
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.25)  # mix 0/50/50 vs 50/25/25
    assert kl_divergence({"happy": 1, "sad": 1}, prior, smoothing=0.0) == pytest.approx(expected)
    assert kl_divergence({"happy": 1, "sad": 1}, prior) == pytest.approx(expected, rel=0.02)  # smoothing: slightly less


def test_class_prior_from_split_json_else_uniform(tmp_path):
    (tmp_path / "split.json").write_text(json.dumps({"train": {"label_counts": {"angry": 6, "happy": 2}}, "test": {}}))
    prior = load_class_prior(tmp_path, LABELS)
    assert prior.probabilities == {"angry": 0.75, "happy": 0.25, "sad": 0.0}
    assert "split.json" in prior.source
    uniform = load_class_prior(tmp_path / "missing", LABELS)
    assert uniform.probabilities == pytest.approx({label: 1 / 3 for label in LABELS})
    assert uniform.source.startswith("uniform")
    (tmp_path / "split.json").write_text("{not json")
    assert load_class_prior(tmp_path, LABELS).source.startswith("uniform")


def value_of(metrics: AppMetrics, name: str, labels: dict | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {})


def test_metrics_count_answers_confidence_and_drift():
    metrics = AppMetrics(LABELS, ClassPrior({label: 1 / 3 for label in LABELS}, "uniform (test)"), 0.5, drift_window=4)
    other = AppMetrics(LABELS, ClassPrior({label: 1 / 3 for label in LABELS}, "uniform (test)"), 0.5)  # private registries
    for top in ("angry", "angry", "happy", "angry", "angry"):
        metrics.observe_answer({label: (0.8 if label == top else 0.1) for label in LABELS}, 0.02)
    metrics.observe_answer({"angry": 0.4, "happy": 0.35, "sad": 0.25}, 0.03)
    metrics.observe_failure("rejected_input", 0.01, reason="too_long")
    metrics.observe_failure("refused", reason="url_input")

    assert value_of(metrics, "ser_requests_total", {"outcome": "answered"}) == 6
    assert value_of(metrics, "ser_requests_total", {"outcome": "rejected_input"}) == 1
    assert value_of(metrics, "ser_requests_total", {"outcome": "refused"}) == 1
    assert value_of(metrics, "ser_predictions_total", {"label": "angry"}) == 5
    assert value_of(metrics, "ser_predictions_total", {"label": "sad"}) == 0
    assert value_of(metrics, "ser_low_confidence_total") == 1
    assert value_of(metrics, "ser_rejected_inputs_total", {"reason": "url_input"}) == 1
    assert value_of(metrics, "ser_request_latency_seconds_count") == 7
    # Window of 4: happy, angry, angry, angry(0.4).
    assert metrics.recent_mix() == {"angry": 0.75, "happy": 0.25, "sad": 0.0}
    assert value_of(metrics, "ser_prediction_drift_kl") == pytest.approx(
        kl_divergence({"angry": 3, "happy": 1}, {label: 1 / 3 for label in LABELS})
    )
    assert value_of(other, "ser_requests_total", {"outcome": "answered"}) == 0
    with pytest.raises(ValueError, match="Unknown outcome"):
        metrics.observe_failure("exploded")


def test_limits_come_from_flags_else_environment(monkeypatch):
    monkeypatch.delenv("SER_MAX_UPLOAD_MB", raising=False)
    assert app.AppArguments().max_upload_mb == 32.0
    monkeypatch.setenv("SER_MAX_UPLOAD_MB", "5")
    monkeypatch.setenv("SER_REQUEST_TIMEOUT_S", "7.5")
    monkeypatch.setenv("SER_MAX_QUEUE_SIZE", "3")
    defaults = app.AppArguments()
    assert (defaults.max_upload_mb, defaults.request_timeout_s, defaults.max_queue_size) == (5.0, 7.5, 3)
    monkeypatch.setenv("SER_MAX_QUEUE_SIZE", "lots")
    with pytest.raises(ValueError, match=r"\$SER_MAX_QUEUE_SIZE='lots' is not a valid int \(it sets --max_queue_size\)"):
        env_default("max_queue_size", 16)()


def test_cli_help_documents_every_limit(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["app.py", "--help"])
    with pytest.raises(SystemExit):
        app.main()
    help_text = " ".join(capsys.readouterr().out.split())
    for flag, variable in (
        ("--max_upload_mb", "SER_MAX_UPLOAD_MB"),
        ("--max_duration_s", "SER_MAX_DURATION_S"),
        ("--concurrency_limit", "SER_CONCURRENCY_LIMIT"),
        ("--max_queue_size", "SER_MAX_QUEUE_SIZE"),
        ("--request_timeout_s", "SER_REQUEST_TIMEOUT_S"),
        ("--upload_ttl_s", "SER_UPLOAD_TTL_S"),
        ("--drift_window", "SER_DRIFT_WINDOW"),
    ):
        assert flag in help_text and variable in help_text


def test_upload_registry_deletes_after_the_last_pending_use(tmp_path):
    uploads = UploadRegistry(tmp_path, ttl_s=100)
    shared = tmp_path / "abc" / "clip.wav"
    shared.parent.mkdir()
    shared.write_bytes(b"x")
    uploads.register([str(shared), str(shared)])  # the same bytes uploaded twice -> one path
    assert uploads.release(shared) is False and shared.exists()
    assert uploads.release(shared) is True and not shared.exists()
    # The folder stays a while: an identical upload landing in it right now must not lose it.
    assert shared.parent.is_dir()
    assert uploads.release(shared) is False  # never registered any more: nothing to do
    uploads.sweep()
    assert shared.parent.is_dir()  # empty, but only just
    os.utime(shared.parent, (0, 0))
    uploads.sweep()
    assert not shared.parent.exists()

    abandoned = tmp_path / "def" / "late.wav"
    abandoned.parent.mkdir()
    abandoned.write_bytes(b"y")
    uploads.register([str(abandoned)])
    assert uploads.sweep() == 0 and abandoned.exists()
    assert uploads.sweep(now=10**9) == 1 and not abandoned.exists()


def test_unread_live_slices_go_when_their_recording_ends_and_a_new_recordings_stay(tmp_path):
    import time

    uploads = UploadRegistry(tmp_path)
    silence = tmp_path / "h" / "audio.wav"  # identical slices (digital silence) share one path
    silence.parent.mkdir()
    silence.write_bytes(b"x")
    uploads.register([str(silence)])
    uploads.claim("page", [str(silence)])  # the old recording's slice, never read
    stop = time.monotonic()
    uploads.register([str(silence)])
    uploads.claim("page", [str(silence)])  # the next recording's first slice, after Stop began
    assert uploads.release_claims("page", claimed_before=stop) == 0 and silence.exists()  # one use left
    assert uploads.release(silence, owner="page") is True and not silence.exists()  # read: gone
    assert uploads.release_claims("page") == 0  # nothing claimed any more
    assert uploads.pending() == 0


def test_upload_identical_to_an_example_is_never_deleted(tmp_path):
    example = REPO_ROOT / "examples" / "neutral_actor23.flac"
    uploads = UploadRegistry(tmp_path / "up", keep_files=[example])
    cached = tmp_path / "up" / "hash" / example.name
    cached.parent.mkdir(parents=True)
    shutil.copy(example, cached)
    uploads.register([str(cached)])
    assert uploads.release(cached) is False and cached.exists()


def test_body_checks_refuse_urls_foreign_paths_and_wrong_shapes(tmp_path):
    uploads = UploadRegistry(tmp_path / "uploads")
    inside = tmp_path / "uploads" / "h" / "a.wav"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"x")
    endpoint = Endpoint(num_inputs=1, file_inputs=frozenset({0}))

    def reason(data) -> str | None:
        refusal = check_body(json.dumps({"data": data}).encode(), endpoint, uploads)
        return None if refusal is None else refusal.reason

    assert reason([file_data(str(inside))]) is None
    assert reason([None]) is None
    assert reason([file_data("http://127.0.0.1:1/x.wav")]) == "url_input"
    assert reason([file_data("file:///etc/passwd")]) == "url_input"
    assert reason([file_data("/etc/passwd")]) == "path_outside_uploads"
    assert reason([file_data(str(REPO_ROOT / "app.py"))]) == "path_outside_uploads"
    assert reason([file_data(str(tmp_path / "uploads" / ".." / "secret.wav"))]) == "path_outside_uploads"
    assert reason([{"path": 3, "meta": {"_type": "gradio.FileData"}}]) == "malformed_payload"
    assert reason(["/etc/passwd"]) == "malformed_payload"
    assert reason([]) == "malformed_payload"
    assert check_body(b"not json", endpoint, uploads) is None  # Gradio answers 422 for it itself


def test_guard_times_out_with_a_message_and_deletes_the_upload_when_work_ends(tmp_path):
    metrics = AppMetrics(LABELS, ClassPrior({label: 1 / 3 for label in LABELS}, "uniform (test)"), 0.5)
    uploads = UploadRegistry(tmp_path)
    upload = tmp_path / "h" / "clip.wav"
    upload.parent.mkdir()
    upload.write_bytes(b"x")
    uploads.register([str(upload)])
    guard = RequestGuard(metrics, uploads, timeout_s=0.05, workers=1)
    release, finished = threading.Event(), threading.Event()

    def stuck():
        release.wait(30)
        finished.set()
        return {"angry": 1.0}

    with pytest.raises(RequestTimeoutError, match=r"0\.05 s request time limit \(--request_timeout_s\)"):
        guard.run(str(upload), stuck, lambda result: result)
    assert upload.exists()  # the abandoned work may still be reading it
    release.set()
    assert finished.wait(30)
    guard._executor.shutdown(wait=True)
    assert not upload.exists()
    assert value_of(metrics, "ser_requests_total", {"outcome": "timeout"}) == 1


def test_rejection_reason_labels():
    from ser.audio.loader import AudioTooLongError

    class UserFacing(Exception):
        pass

    try:
        try:
            raise AudioTooLongError("too long")
        except AudioTooLongError as cause:
            raise UserFacing("too long") from cause
    except UserFacing as error:
        assert rejection_reason(error) == "audio_too_long"
    assert rejection_reason(UserFacing("No audio received")) == "user_error"


# -- a live server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_cnn_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("operations_server")
    upload_dir, log_path = root / "gradio_tmp", root / "app.log"
    with running_app(tiny_cnn_dir, log_path, ("--max_upload_mb", "1"), {"GRADIO_TEMP_DIR": str(upload_dir)}) as url:
        yield url, upload_dir, log_path


def user_files(upload_dir: Path) -> list[Path]:
    """Files in the upload folder other than the example clips Gradio cached at start."""
    example_names = {path.name for path in (REPO_ROOT / "examples").iterdir()}
    return [path for path in upload_dir.rglob("*") if path.is_file() and path.name not in example_names]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, Path]:
    """Copies of the example clips under other names (so they are user uploads, not examples)."""
    directory = tmp_path_factory.mktemp("speech")
    copies = {}
    for index, example in enumerate(Path(path) for path in app.example_paths()):
        copies[f"clip{index}"] = Path(shutil.copy(example, directory / f"user_clip_{index}.flac"))
    return copies


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@requires_ffmpeg
def test_no_upload_is_kept_after_its_answer(server, speech):
    url, upload_dir, log_path = server
    client = Client(url, verbose=False)
    before = scrape(url)
    clips = list(speech.values())
    for index in range(12):
        label_value, _, answer = client.predict(handle_file(str(clips[index % len(clips)])), api_name="/predict")
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    for index in range(6):
        (server_path,) = rest_upload(url, clips[index % len(clips)]).json()
        status, event, _ = rest_call(url, [file_data(server_path)])
        assert (status, event) == (200, "complete")
        # Asking again about a deleted upload gets a message, not a stack trace or a server path.
        if index == 0:
            _, event, data = rest_call(url, [file_data(server_path)])
            assert event == "error" and data["error"].startswith("This audio is no longer on the server")
    assert user_files(upload_dir) == []

    after = scrape(url)
    answered = after[("ser_requests_total", (("outcome", "answered"),))] - before[("ser_requests_total", (("outcome", "answered"),))]
    assert answered == 18
    predicted = sum(value for (name, _), value in after.items() if name == "ser_predictions_total")
    assert predicted >= 18
    assert after[("ser_request_latency_seconds_count", ())] >= 18
    assert ("ser_prediction_drift_kl", ()) in after and after[("ser_drift_window_answers", ())] >= 18


@requires_ffmpeg
def test_an_upload_identical_to_an_example_keeps_the_example_working(server):
    url, upload_dir, _ = server
    example = REPO_ROOT / "examples" / "neutral_actor23.flac"
    for _ in range(2):
        (server_path,) = rest_upload(url, example).json()
        status, event, _ = rest_call(url, [file_data(server_path)])
        assert (status, event) == (200, "complete")
    assert any(path.name == example.name for path in upload_dir.rglob("*"))


@pytest.mark.parametrize(
    "data, status, reason",
    [
        ([file_data("http://127.0.0.1:1/x.wav")], 400, "url_input"),
        ([file_data("https://127.0.0.1:1/x.wav")], 400, "url_input"),
        ([file_data("/etc/passwd")], 400, "path_outside_uploads"),
        ([file_data(str(REPO_ROOT / "app.py"))], 400, "path_outside_uploads"),
        ([file_data("app.py")], 400, "path_outside_uploads"),
        ([{"path": "/etc/passwd"}], 400, "path_outside_uploads"),
        (["/etc/passwd"], 422, "malformed_payload"),
        ([42], 422, "malformed_payload"),
        ([], 422, "malformed_payload"),
        ([None, None], 422, "malformed_payload"),
    ],
)
def test_foreign_files_and_malformed_payloads_are_refused_with_4xx(server, data, status, reason):
    url, _, _ = server
    got_status, event, body = rest_call(url, data)
    assert (got_status, event, body["reason"]) == (status, None, reason)
    assert len(body["error"]) > 20


def test_refused_through_gradio_client_too(server):
    from httpx import HTTPStatusError

    url, _, _ = server
    client = Client(url, verbose=False)
    with pytest.raises(HTTPStatusError, match="400"):
        client.predict(handle_file("http://127.0.0.1:1/x.wav"), api_name="/predict")
    before = scrape(url)[("ser_requests_total", (("outcome", "refused"),))]
    requests.post(f"{url}/gradio_api/call/predict", json={"data": [file_data("/etc/passwd")]}, timeout=30)
    assert scrape(url)[("ser_requests_total", (("outcome", "refused"),))] == before + 1


def test_oversized_upload_names_the_limit(server, tmp_path):
    url, upload_dir, _ = server
    big = tmp_path / "big.wav"
    big.write_bytes(b"RIFF" + b"\0" * (2 * 1024 * 1024))
    response = rest_upload(url, big)
    assert response.status_code == 413
    assert response.text == "The upload is larger than the 1 MB limit (--max_upload_mb / $SER_MAX_UPLOAD_MB)."
    assert user_files(upload_dir) == []


def test_health_and_metrics_endpoints(server, tiny_cnn_dir):
    url, _, _ = server
    health = requests.get(f"{url}/health", timeout=10)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["model"] == Path(tiny_cnn_dir).name and body["backend"]
    # Why that backend serves, and on what: the automatic choice unless SER_BACKEND was set.
    assert body["backend_reason"] and body["hardware"] and isinstance(body["backend_automatic"], bool)
    if body["backend_automatic"]:
        assert body["backend"] in body["backend_timings_ms"] and "torch" in body["backend_timings_ms"]
    metrics = requests.get(f"{url}/metrics", timeout=10)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "ser_prediction_drift_kl" in metrics.text and "prior: uniform (no split.json" in metrics.text
    # The UI and the API are still where they were.
    assert requests.get(f"{url}/", timeout=10).status_code == 200
    assert requests.get(f"{url}/gradio_api/info", timeout=10).status_code == 200


def test_logs_hold_no_audio_and_no_tokens(server):
    url, upload_dir, log_path = server
    log = log_path.read_text(errors="replace")
    assert str(upload_dir) not in log  # no server paths of uploads (file names only)
    assert "hf_" not in log and "RIFF" not in log and "fLaC" not in log


def test_health_is_503_until_ready():
    import asyncio

    from ser.serving.middleware import ServingMiddleware, ServingState
    from ser.serving.monitoring import Readiness

    state = ServingState(
        AppMetrics(LABELS, ClassPrior({label: 1 / 3 for label in LABELS}, "uniform (test)"), 0.5),
        UploadRegistry("/nonexistent"),
        Readiness(),
        max_upload_mb=1,
    )
    sent = []

    async def send(message):
        sent.append(message)

    async def call():
        await ServingMiddleware(None, state)({"type": "http", "path": "/health", "method": "GET"}, None, send)

    asyncio.run(call())
    assert sent[0]["status"] == 503 and json.loads(sent[1]["body"]) == {"status": "starting"}
    state.readiness.mark_ready("m", "torch")
    sent.clear()
    asyncio.run(call())
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == {"status": "ok", "model": "m", "backend": "torch"}
