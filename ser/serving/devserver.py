"""Run ``python app.py`` as a subprocess on a free loopback port: the one way the live-server tests
and the server benchmarks start and stop the app."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Generous: importing torch + gradio on a busy 2-core machine takes ~10-20 s. Not a speed check.
DEFAULT_STARTUP_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


@dataclass(frozen=True)
class AppServer:
    url: str
    process: subprocess.Popen

    def rss_mb(self) -> tuple[float, float]:
        return process_rss_mb(self.process.pid)


@contextlib.contextmanager
def running_app(
    model: str | os.PathLike,
    log_path: Path,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> Iterator[AppServer]:
    """``python app.py --model M --host 127.0.0.1 --port N [extra_args]``; yields once ``/health`` is 200.

    The app's output goes to ``log_path`` (quoted in the error if it exits or never comes up);
    ``extra_env`` is added to the environment (e.g. ``GRADIO_TEMP_DIR``, ``SER_BACKEND``).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRADIO_SERVER")}
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(extra_env or {}))
    command = [sys.executable, str(REPO_ROOT / "app.py"), "--model", str(model), "--host", "127.0.0.1", "--port", str(port), *extra_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + startup_timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"app.py exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
                try:
                    if requests.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"app.py did not start within {startup_timeout_s:.0f} s:\n{log_path.read_text(errors='replace')}")
                time.sleep(0.5)
            yield AppServer(url=url, process=process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
