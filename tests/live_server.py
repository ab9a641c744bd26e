"""Start ``python app.py`` on a free 127.0.0.1 port for the live-server and browser tests, then stop it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
#: For tests that send synthetic tones to a random model: no quality gate (tones are not speech)
#: and no "uncertain" headline, so the transport is what they check (tests/test_quality.py and
#: tests/test_timeline.py cover the gate and the threshold).
UNGATED_ARGS = ("--quality_gate", "false", "--confidence_threshold", "0")
#: Generous: importing torch + gradio on a busy 2-core machine takes ~10-20 s. Not an assertion on speed.
STARTUP_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(
    model_dir: Path, log_path: Path, extra_args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """``python app.py --model model_dir --port N [extra_args]`` as a subprocess; yields its base URL.

    ``extra_env`` is added to the environment (e.g. ``GRADIO_TEMP_DIR`` to watch the upload folder).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRADIO_SERVER")}
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(extra_env or {}))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "app.py"), "--model", str(model_dir), "--port", str(port), *extra_args],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"app.py exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
                try:
                    if requests.get(f"{url}/gradio_api/info", timeout=5).ok:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"app.py did not start within {STARTUP_TIMEOUT_S:.0f} s:\n{log_path.read_text(errors='replace')}")
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
