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
