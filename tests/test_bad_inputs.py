"""Every case of scripts/make_bad_inputs.py through a live ``python app.py``: a clear error or a valid answer.

The server keeps serving throughout, a normal request afterwards still succeeds, its log never
echoes file contents, and no upload is left behind.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import requests
from conftest import REPO_ROOT
from live_server import file_data, rest_call, rest_upload, running_app

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None, reason="needs ffmpeg and espeak-ng"
)

#: Small limits so the over-the-limit cases stay small too.
MAX_UPLOAD_MB = 2.0
MAX_DURATION_S = 20.0


def _load_script():
    spec = importlib.util.spec_from_file_location("make_bad_inputs", REPO_ROOT / "scripts" / "make_bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


make_bad_inputs = _load_script()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list]:
    directory = tmp_path_factory.mktemp("bad_inputs")
    cases = make_bad_inputs.make_corpus(directory, max_upload_mb=MAX_UPLOAD_MB, max_duration_s=MAX_DURATION_S)
    return directory, cases


@pytest.fixture(scope="module")
def server(tiny_cnn_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs_server")
    upload_dir, log_path = root / "gradio_tmp", root / "app.log"
    args = ("--max_upload_mb", str(MAX_UPLOAD_MB), "--max_duration_s", str(MAX_DURATION_S))
    with running_app(tiny_cnn_dir, log_path, args, {"GRADIO_TEMP_DIR": str(upload_dir)}) as url:
        yield url, upload_dir, log_path


def send(url: str, path: Path) -> tuple[str, object]:
    """('answer', label value) / ('error', message) for one file through upload + /call/predict."""
    uploaded = rest_upload(url, path)
    if uploaded.status_code != 200:
        assert 400 <= uploaded.status_code < 500, (path.name, uploaded.status_code, uploaded.text)
        return "error", uploaded.text
    (server_path,) = uploaded.json()
    status, event, data = rest_call(url, [file_data(server_path)])
    assert status == 200 and event in {"complete", "error"}, (path.name, status, event, data)
    if event == "error":
        return "error", data["error"]
    return "answer", data[0]


def test_corpus_has_the_required_cases(corpus):
    directory, cases = corpus
    assert len(cases) >= 30
    names = {case.name for case in cases}
    for required in (
        "empty_wav", "text_as_wav", "truncated_header", "nan_samples", "inf_samples", "rate_8k", "rate_96k",
        "six_channels", "very_short", "one_hour_flac", "one_hour_webm", "speech_mp3", "speech_ogg_vorbis",
        "speech_webm_opus", "speech_m4a_aac", "over_upload_limit", "random_bytes_wav",
    ):
        assert required in names
    manifest = json.loads((directory / "manifest.json").read_text())
    assert [entry["name"] for entry in manifest] == [case.name for case in cases]
    assert all((directory / case.file).is_file() for case in cases)
    assert (directory / "over_upload_limit.wav").stat().st_size > MAX_UPLOAD_MB * 1024 * 1024


def test_every_case_gets_a_clear_error_or_a_valid_answer(corpus, server):
    directory, cases = corpus
    url, upload_dir, log_path = server
    outcomes = {}
    for case in cases:
        kind, value = send(url, directory / case.file)
        outcomes[case.name] = kind
        if kind == "error":
            # A sentence for a person: no traceback, no server paths, not Gradio's bare null.
            assert isinstance(value, str) and len(value) > 20, (case.name, value)
            assert "Traceback" not in value and str(upload_dir) not in value and "/tmp/" not in value, (case.name, value)
        else:
            confidences = {item["label"]: item["confidence"] for item in value["confidences"]}
            assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-6), case.name
        assert requests.get(f"{url}/health", timeout=10).status_code == 200, f"server down after {case.name}"
    expected = {case.name: case.expect for case in cases if case.expect != "either"}
    assert {name: outcomes[name] for name in expected} == expected


def test_limits_are_named_in_their_errors(corpus, server):
    directory, _ = corpus
    url, _, _ = server
    kind, message = send(url, directory / "over_upload_limit.wav")
    assert kind == "error" and f"{MAX_UPLOAD_MB:g} MB limit" in message and "--max_upload_mb" in message
    kind, message = send(url, directory / "one_hour.flac")
    assert kind == "error" and "3600.0 s long" in message and f"at most {MAX_DURATION_S:g} s" in message


def test_server_still_answers_and_kept_nothing(corpus, server):
    directory, _ = corpus
    url, upload_dir, log_path = server
    kind, value = send(url, directory / "reference_speech.wav")
    assert kind == "answer"
    # Examples cached at start stay; every upload the corpus made is gone.
    example_names = {path.name for path in (REPO_ROOT / "examples").iterdir()}
    left = [path for path in upload_dir.rglob("*") if path.is_file() and path.name not in example_names]
    assert left == []
    log = log_path.read_text(errors="replace")
    assert make_bad_inputs.CONTENT_MARKER not in log
