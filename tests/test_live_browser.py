"""Live mode in a real browser: headless Chromium with a fake microphone playing a wav file
(--use-file-for-fake-audio-capture), against ``python app.py`` with the bundled model.

An unseen RAVDESS actor (24; actors 21-24 are never trained on) says two angry clips, then two sad
ones: the bars update while they speak and move from angry towards sad, and Stop gives the whole
recording's answer. Silence gives "listening…". Two pages at once keep their own recordings and
calibrations. A recording that reaches the time limit ends by itself with a message. Skips without
Chromium, playwright, or ../shared (the RAVDESS clips).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import SHARED_DATA, requires_shared_data
from live_server import running_app
from test_browser import BROWSER_ARGS, CHROMIUM, UI_TIMEOUT_MS, screenshot

from ser.inference.predictor import BUNDLED_MODEL_DIR
from ser.serving.devserver import ravdess_speech

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -r requirements-dev.txt)")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    requires_shared_data,
]

RAVDESS = SHARED_DATA / "ravdess" / "Emotions"
ACTOR = 24
RATE = 48_000
#: A headless page in the background would otherwise have its timers and media throttled.
LIVE_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def live_url(tmp_path_factory):
    with running_app(BUNDLED_MODEL_DIR, tmp_path_factory.mktemp("live") / "app.log") as url:
        yield url


@pytest.fixture(scope="module")
def angry_then_sad(tmp_path_factory) -> tuple[Path, float, float]:
    """(wav, seconds of angry speech, total seconds): 16-bit PCM at 48 kHz, -12 dBFS peak."""
    angry = ravdess_speech(RAVDESS, ["Angry"], ACTOR)
    sad = ravdess_speech(RAVDESS, ["Sad"], ACTOR)
    scale = max(np.abs(angry).max(), np.abs(sad).max())
    audio = np.concatenate([angry, sad]).astype(np.float64) / scale * 0.25
    path = tmp_path_factory.mktemp("fake-mic") / "angry_then_sad.wav"
    soundfile.write(str(path), audio.astype(np.float32), RATE, subtype="PCM_16")
    return path, len(angry) / RATE, len(audio) / RATE


def browser_with(playwright, wav: Path):
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=[*BROWSER_ARGS, *LIVE_ARGS, f"--use-file-for-fake-audio-capture={wav}"]
    )


def open_live(browser, url: str):
    page = browser.new_context().new_page()  # one context per session: its own cookies and connections
    page.goto(url, wait_until="load")
    page.get_by_text("Live mode: the bars move while you speak").click()
    record_button(page).wait_for(timeout=UI_TIMEOUT_MS)
    return page


def record_button(page):
    return page.locator("#live-mic").get_by_role("button", name="Record", exact=True)


def stop_button(page):
    return page.locator("#live-mic button.stop-button")


def status(page) -> str:
    return page.locator("#live-status").inner_text().strip()


def live_bars(page) -> dict[str, float]:
    # One snapshot in the page: reading meter by meter could straddle a re-render and miss some.
    pairs = page.evaluate(
        """() => Array.from(document.querySelectorAll("#live-bars [data-testid$='-confidence-set'] meter"))
                      .map(meter => [meter.getAttribute("aria-label"), parseFloat(meter.getAttribute("value"))])"""
    )
    return dict(pairs)


def wait_for_result(page) -> str:
    result = page.locator("#live-result")
    page.wait_for_function("() => (document.querySelector('#live-result')?.innerText || '').includes('Whole recording')", timeout=UI_TIMEOUT_MS)
    return result.inner_text().strip()


def test_angry_then_sad_moves_the_bars_and_stop_scores_the_whole(playwright, live_url, angry_then_sad):
    wav, angry_s, total_s = angry_then_sad
    browser = browser_with(playwright, wav)
    try:
        page = open_live(browser, live_url)
        record_button(page).click()
        stop_button(page).wait_for(timeout=UI_TIMEOUT_MS)
        started = time.monotonic()
        readings = []  # (seconds since Record, status, bars, greyed)
        while time.monotonic() - started < total_s - 0.3:
            time.sleep(0.25)
            readings.append((time.monotonic() - started, status(page), live_bars(page), page.locator("#live-bars.live-stale").count() > 0))
        stop_button(page).click()
        result = wait_for_result(page)
        screenshot(page, "live_angry_then_sad.png")
    finally:
        browser.close()
    num_classes = max(len(bars) for _, _, bars, _ in readings)
    voiced = [(t, bars) for t, text, bars, greyed in readings if "Live:" in text and len(bars) == num_classes and not greyed]
    distinct = {tuple(sorted(bars.items())) for _, bars in voiced}
    assert len(distinct) >= 6, f"the bars should move while the actor speaks: {readings}"
    # angry while the angry clips play, then sad gaining once the sad ones are well under way
    early = [bars for t, bars in voiced if t < angry_s - 0.5]
    late = [bars for t, bars in voiced if t > angry_s + 3.0]
    assert early and late, readings
    def mean(readings, label):
        return float(np.mean([bars[label] for bars in readings]))

    assert mean(early, "angry") > mean(early, "sad"), early
    assert mean(late, "sad") > mean(late, "angry"), late
    assert mean(late, "sad") > mean(early, "sad") + 0.3, (early, late)
    # the strip drew an entry per voiced update; Stop scored the whole recording once
    assert re.search(r"Whole recording \((1[2-9]|2\d)\.\d s\)", result), result
    assert "Recording" in result  # and its timeline


def test_silence_is_listening_not_an_emotion(playwright, live_url, tmp_path):
    wav = tmp_path / "silence.wav"
    rng = np.random.default_rng(0)
    soundfile.write(str(wav), (rng.standard_normal(4 * RATE) * 1e-4).astype(np.float32), RATE, subtype="PCM_16")
    browser = browser_with(playwright, wav)
    try:
        page = open_live(browser, live_url)
        record_button(page).click()
        page.wait_for_function("() => (document.querySelector('#live-status')?.innerText || '').includes('listening')", timeout=UI_TIMEOUT_MS)
        time.sleep(2.0)
        text, bars = status(page), live_bars(page)
        stop_button(page).click()
    finally:
        browser.close()
    assert "listening…" in text and "Live:" not in text, text
    assert bars == {}, "no emotion is shown for silence"


def test_two_pages_keep_their_own_recordings_and_calibrations(playwright, live_url, angry_then_sad):
    wav, _, _ = angry_then_sad
    browser = browser_with(playwright, wav)
    try:
        calibrating, plain = open_live(browser, live_url), open_live(browser, live_url)
        plain.locator("#live-calibrate input").uncheck()
        plain.wait_for_function("() => document.querySelector('#live-calibration')?.innerText.includes('off')", timeout=UI_TIMEOUT_MS)
        for page in (calibrating, plain):
            record_button(page).click()
        time.sleep(4.0)
        stop_button(plain).click()
        time.sleep(3.0)
        stop_button(calibrating).click()
        results = [wait_for_result(page) for page in (calibrating, plain)]
        calibration = [page.locator("#live-calibration").inner_text() for page in (calibrating, plain)]
    finally:
        browser.close()
    seconds = [float(re.search(r"Whole recording \(([\d.]+) s\)", text).group(1)) for text in results]
    assert seconds[0] > seconds[1] + 2.0, results  # each page scored its own recording
    assert "on, collecting" in calibration[0] and "(0 of" not in calibration[0], calibration
    assert "off" in calibration[1] and "0 windows kept" in calibration[1], calibration


def test_time_limit_ends_the_recording_with_a_message(playwright, angry_then_sad, tmp_path):
    wav, _, _ = angry_then_sad
    with running_app(BUNDLED_MODEL_DIR, tmp_path / "app.log", ("--live_max_duration_s", "3")) as url:
        browser = browser_with(playwright, wav)
        try:
            page = open_live(browser, url)
            record_button(page).click()
            result = wait_for_result(page)  # nobody presses Stop
            message = status(page)
            record_button(page).wait_for(timeout=UI_TIMEOUT_MS)  # the microphone is back to Record
        finally:
            browser.close()
    assert "Time limit reached (3 s)" in message, message
    assert "Whole recording (3.0 s)" in result, result
