"""The live-server and browser tests' app (``ser.serving.devserver``) and the README's REST flow."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import requests

from ser.serving import devserver

#: For tests that send synthetic tones to a random model: no quality gate (tones are not speech)
#: and no "uncertain" headline, so the transport is what they check (tests/test_quality.py and
#: tests/test_timeline.py cover the gate and the threshold).
UNGATED_ARGS = ("--quality_gate", "false", "--confidence_threshold", "0")


@contextlib.contextmanager
def running_app(
    model_dir: Path, log_path: Path, extra_args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """:func:`ser.serving.devserver.running_app`, yielding its base URL."""
    with devserver.running_app(model_dir, log_path, extra_args, extra_env) as server:
        yield server.url


def rest_upload(url: str, path: Path) -> requests.Response:
    """``POST /gradio_api/upload`` of one file (the README's curl flow, step 1)."""
    with open(path, "rb") as handle:
        return requests.post(f"{url}/gradio_api/upload", files={"files": (path.name, handle)}, timeout=60)


def rest_call(url: str, data: list, api_name: str = "predict") -> tuple[int, str | None, object]:
    """``POST /gradio_api/call/<api_name>`` then read its event stream (steps 2 and 3).

    Returns (HTTP status of the POST, last event name or ``None`` if the POST was refused, its data).
    """
    import json

    started = requests.post(f"{url}/gradio_api/call/{api_name}", json={"data": data}, timeout=60)
    if not started.ok:
        return started.status_code, None, started.json()
    stream = requests.get(f"{url}/gradio_api/call/{api_name}/{started.json()['event_id']}", timeout=300)
    events = [block for block in stream.text.strip().split("\n\n") if block.startswith("event:")]
    name_line, data_line = events[-1].splitlines()[:2]
    return started.status_code, name_line.removeprefix("event:").strip(), json.loads(data_line.removeprefix("data:").strip())


def file_data(server_path: str) -> dict:
    return {"path": server_path, "meta": {"_type": "gradio.FileData"}}


class PageRequest:
    """What Gradio passes a handler for one browser session (its ``session_hash``)."""

    def __init__(self, session_hash: str):
        self.session_hash = session_hash


def live_handlers(classifier, max_duration_s: float = 60.0):
    """Live mode's handlers around ``classifier`` as ``app.build_demo`` wires them (gate on, no
    confidence threshold), without a server: for calling them as the page would."""
    import gradio as gr

    from ser.inference.quality import QualityConfig
    from ser.inference.timeline import TimelineConfig
    from ser.serving.display import LabelFiles
    from ser.serving.limits import ServingConfig
    from ser.serving.live import LiveConfig, LiveSessions
    from ser.serving.live_panel import LiveHandlers
    from ser.serving.middleware import create_serving

    sessions = LiveSessions(LiveConfig(max_duration_s=max_duration_s, confidence_threshold=0.0), limit=4)
    state, guard = create_serving(classifier, ServingConfig(), 0.0, 1, user_errors=(gr.Error,), live_sessions=sessions)
    return LiveHandlers(classifier, guard, state.metrics, sessions, LabelFiles(), QualityConfig(), TimelineConfig(confidence_threshold=0.0))
