"""The app in a real browser: Debian Chromium driven by Playwright (upload, example click, microphone).

Installs nothing: skips when /usr/bin/chromium or the playwright package is missing
(apt-get install chromium; pip install playwright; never ``playwright install``).
Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import soundfile
from conftest import REPO_ROOT, synth_clip

from ser.inference.predictor import EmotionClassifier

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: Waiting for the page, not asserting on speed: a busy 2-core CI box can be slow.
UI_TIMEOUT_MS = 60_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -r requirements-dev.txt)")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed"),
]


@pytest.fixture(scope="module")
def reference(tiny_cnn_dir) -> EmotionClassifier:
    return EmotionClassifier.from_pretrained(str(tiny_cnn_dir))


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as driver:
        yield driver


def launch(playwright, extra_args: list[str] = ()):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*BROWSER_ARGS, *extra_args])


def open_app(page, url: str) -> None:
    """Load the page until the app is drawn. Not "networkidle": the page keeps a connection open for
    its session state (live mode's recording, the calibration), so the network never goes idle."""
    page.goto(url, wait_until="load")
    page.get_by_role("button", name="Submit", exact=True).wait_for(timeout=UI_TIMEOUT_MS)


def read_bars(page) -> dict[str, float]:
    """Each class's bar in the gr.Label: its <meter value> (the exact probability the server sent)."""
    meters = page.locator("[data-testid$='-confidence-set'] meter")
    return {meters.nth(index).get_attribute("aria-label"): float(meters.nth(index).get_attribute("value")) for index in range(meters.count())}


def wait_for_result(page) -> tuple[str, dict[str, float], str]:
    top = page.get_by_test_id("label-output-value")
    top.wait_for(timeout=UI_TIMEOUT_MS)
    info = page.get_by_text(re.compile(r"^Clip length"))
    info.wait_for(timeout=UI_TIMEOUT_MS)
    return top.inner_text().strip(), read_bars(page), info.inner_text()


def screenshot(page, name: str) -> Path:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    path = ARTIFACTS_DIR / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_upload_submit_shows_every_class(playwright, ungated_server_url, reference, tmp_path):
    clip = tmp_path / "upload_me.wav"
    soundfile.write(str(clip), synth_clip(1, seed=3, duration_s=2.0, sample_rate=22_050), 22_050)
    expected = reference.classify_file(clip).probabilities

    browser = launch(playwright)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        open_app(page, ungated_server_url)
        page.get_by_role("button", name="Upload file").click()
        page.locator("input[type=file]").set_input_files(str(clip))
        page.get_by_role("button", name="Submit", exact=True).click()
        top, bars, info = wait_for_result(page)
        assert screenshot(page, "app_upload.png").stat().st_size > 0
    finally:
        browser.close()

    assert bars == pytest.approx(expected, abs=1e-6)
    assert len(bars) == len(reference.labels) == 6
    assert top == max(expected, key=expected.get)
    assert info.startswith("Clip length 2.00 s")


def test_clicking_an_example_runs_it(playwright, ungated_server_url, reference):
    from ser.serving.examples import CLIP_PANEL, for_panel, load_examples

    example = for_panel(load_examples(REPO_ROOT / "examples"), CLIP_PANEL)[0]
    expected = reference.classify_file(example.path).probabilities

    browser = launch(playwright)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        open_app(page, ungated_server_url)
        page.get_by_role("button", name=example.label).click()  # the page names the actor, emotion and intensity
        top, bars, _ = wait_for_result(page)
    finally:
        browser.close()

    assert bars == pytest.approx(expected, abs=1e-6)
    assert top == max(expected, key=expected.get)


def test_fake_microphone_recording_gets_a_prediction(playwright, ungated_server_url, reference, tmp_path):
    speech = tmp_path / "angry.wav"  # 16-bit PCM wav, as Chromium's fake capture needs
    samples, rate = soundfile.read(str(REPO_ROOT / "examples" / "angry_actor23.flac"))
    soundfile.write(str(speech), samples, rate, subtype="PCM_16")
    browser = launch(
        playwright,
        ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={speech}"],
    )
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        open_app(page, ungated_server_url)
        # The microphone is the first source, so the recorder is what the page opens with.
        page.get_by_role("button", name="Record", exact=True).click()
        page.locator("button.stop-button").wait_for(timeout=UI_TIMEOUT_MS)
        page.wait_for_timeout(2_000)  # record ~2 s of the fake microphone
        page.locator("button.stop-button").click()
        # After Stop the recording is shown as a playable waveform; then it can be submitted.
        page.get_by_test_id("waveform-Speech").nth(1).wait_for(timeout=UI_TIMEOUT_MS)
        page.get_by_role("button", name="Submit", exact=True).click()
        top, bars, info = wait_for_result(page)
        screenshot(page, "app_microphone.png")
    finally:
        browser.close()

    assert set(bars) == set(reference.labels)
    assert sum(bars.values()) == pytest.approx(1.0, abs=1e-6)
    assert top == max(bars, key=bars.get)
    recorded_s = float(re.match(r"Clip length ([0-9.]+) s", info).group(1))
    assert recorded_s > 0.5


def stale_bars_opacity(playwright, url: str) -> float:
    """Live mode's bars as the page draws them while the VAD hears no speech (class ``live-stale``)."""
    browser = launch(playwright)
    try:
        page = browser.new_page()
        open_app(page, url)
        page.get_by_text("Live mode: the bars move while you speak").click()
        page.locator("#live-bars").wait_for(timeout=UI_TIMEOUT_MS)
        page.evaluate("() => { const bars = document.querySelector('#live-bars'); bars.style.transition = 'none'; bars.classList.add('live-stale'); }")
        try:  # the page draws its components one after another: give the style a moment to arrive
            page.wait_for_function("() => getComputedStyle(document.querySelector('#live-bars')).opacity < 0.99", timeout=10_000)
        except sync_api.TimeoutError:
            pass  # no style: the assertion below says so
        return float(page.evaluate("() => getComputedStyle(document.querySelector('#live-bars')).opacity"))
    finally:
        browser.close()


@pytest.fixture(scope="module")
def gradio_reload_url(tiny_cnn_dir, tmp_path_factory):
    """``gradio app.py``: the reload mode people develop Spaces with (no ``main()``, no launch arguments)."""
    import os
    import subprocess
    import sys
    import time

    import requests

    from ser.serving.devserver import free_port

    port = free_port()
    log_path = tmp_path_factory.mktemp("gradio_reload") / "app.log"
    env = {**os.environ, "SER_MODEL": str(tiny_cnn_dir), "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    gradio_cli = Path(sys.executable).with_name("gradio")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(gradio_cli), "app.py"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")
            try:
                if requests.get(f"http://127.0.0.1:{port}/gradio_api/info", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_silent_live_bars_are_greyed_under_python_app_py(playwright, ungated_server_url):
    assert stale_bars_opacity(playwright, ungated_server_url) == pytest.approx(0.45)


def test_silent_live_bars_are_greyed_under_gradio_reload_mode(playwright, gradio_reload_url):
    assert stale_bars_opacity(playwright, gradio_reload_url) == pytest.approx(0.45)
