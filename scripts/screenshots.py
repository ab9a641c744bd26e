"""The README's pictures, re-made: the page after an example clip was classified, and the timeline
of the long example, taken with headless Chromium (Debian's, driven by Playwright) against
``python app.py`` on the bundled model.

    apt-get install -y chromium && python -m scripts.screenshots            # -> docs/images/*.png
    python -m scripts.screenshots --example angry_actor23.flac --output_dir /tmp/shots
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from ser.inference.predictor import BUNDLED_MODEL_DIR
from ser.serving.devserver import running_app
from ser.serving.examples import CLIP_PANEL, TIMELINE_PANEL, for_panel, load_examples

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
#: Debian's Chromium as root, headless, without reaching out to the network.
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
#: Waiting for the page, not a speed check.
TIMEOUT_MS = 120_000


@dataclass
class ScreenshotArguments:
    model: str = field(default=str(BUNDLED_MODEL_DIR), metadata={"help": "Model folder the app serves."})
    example: str = field(default="angry_actor23.flac", metadata={"help": "Which example clip to click (a file in examples/)."})
    output_dir: str = field(default=str(REPO_ROOT / "docs" / "images"), metadata={"help": "Where app.png and timeline.png go."})
    width: int = field(default=1280, metadata={"help": "Browser window width, pixels."})


def take(args: ScreenshotArguments) -> tuple[Path, Path, str, str, list[dict]]:
    from playwright.sync_api import sync_playwright

    examples = load_examples(REPO_ROOT / "examples")
    clip = next(example for example in for_panel(examples, CLIP_PANEL) if example.path.name == args.example)
    long_recording = for_panel(examples, TIMELINE_PANEL)[0]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    page_png, timeline_png = output_dir / "app.png", output_dir / "timeline.png"
    with tempfile.TemporaryDirectory() as scratch, running_app(args.model, Path(scratch) / "app.log") as server, sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.goto(server.url, wait_until="load")
            page.get_by_role("button", name=clip.label).click()
            page.get_by_text(re.compile(r"^Clip length")).wait_for(timeout=TIMEOUT_MS)
            page.wait_for_timeout(500)  # the bars' animation
            info = page.get_by_text(re.compile(r"^Clip length")).inner_text()
            page.screenshot(path=str(page_png), full_page=False)
            page.get_by_text("Long recording: emotion timeline").click()
            page.get_by_role("button", name=long_recording.label).click()
            page.get_by_role("button", name="Build timeline").click()
            page.locator("#timeline-plot img, #timeline-plot canvas").first.wait_for(timeout=TIMEOUT_MS)
            page.wait_for_timeout(500)
            summary = page.locator("#timeline-info").inner_text()
            page.locator("#timeline-plot").screenshot(path=str(timeline_png))
        finally:
            browser.close()
        segments = timeline_segments(server.url, long_recording.path)
    return page_png, timeline_png, info, summary, segments


def timeline_segments(url: str, path: Path) -> list[dict]:
    """The same recording through the public ``/timeline`` endpoint: what the plot shows, as numbers."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gradio_client import Client, handle_file

    return Client(url, verbose=False).predict(handle_file(str(path)), api_name="/timeline")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(ScreenshotArguments).parse_args_into_dataclasses()
    if not CHROMIUM.is_file():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    page_png, timeline_png, info, summary, segments = take(args)
    print(f"{page_png}: the page after {args.example} ({info.splitlines()[0]})")
    print(f"{timeline_png}: {summary}")
    for segment in segments:
        print(f"  {segment['start_s']:5.1f}-{segment['end_s']:5.1f} s  {segment['label']:<9} {segment['confidence']:.2f}{'  uncertain' if segment['uncertain'] else ''}")


if __name__ == "__main__":
    main()
