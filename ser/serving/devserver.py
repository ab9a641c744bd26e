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
from typing import TYPE_CHECKING

import requests

if TYPE_CHECKING:
    import numpy as np

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


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- live mode over HTTP --------------------------------------------------------------------------
def ravdess_speech(
    data_dir: Path, emotions: Sequence[str], actor: int, clips_per_emotion: int = 2, sample_rate: int = 48_000, peak_dbfs: float = -12.0
) -> np.ndarray:
    """Int16 mono speech of one RAVDESS actor (``<data_dir>/<Emotion>/*-<actor>.<ext>``, the actor is
    the file name's last field): ``clips_per_emotion`` clips of each emotion in turn, resampled to
    ``sample_rate`` (what a browser microphone sends) and scaled to ``peak_dbfs``."""
    import numpy as np

    from ser.audio.loader import load_audio

    pieces = []
    for emotion in emotions:
        paths = sorted(path for path in (Path(data_dir) / emotion).glob(f"*-{actor:02d}.*"))[:clips_per_emotion]
        if not paths:
            raise FileNotFoundError(f"No RAVDESS clips of actor {actor} in {Path(data_dir) / emotion}")
        for path in paths:
            pieces.append(load_audio(path, sample_rate))
    audio = np.concatenate(pieces)
    audio *= 10 ** (peak_dbfs / 20) / max(1e-9, float(np.abs(audio).max()))
    return np.round(audio * 32767).astype(np.int16)


class LiveStreamClient:
    """One live-mode session without a browser, speaking Gradio 6's streaming protocol as the page
    does: each slice is uploaded (``/gradio_api/upload``), the first one joins the queue
    (``/gradio_api/queue/join``), the others go to ``/gradio_api/stream/<event_id>``; the session's
    server-sent events (``/gradio_api/queue/data``) carry each update. :meth:`stop` closes the
    stream and runs the Stop event, returning its outputs.

    ``updates``: ``(arrival time, outputs)`` of every update the stream handler sent.
    """

    def __init__(self, url: str, calibrate: bool = True, timeout_s: float = 60.0):
        import threading
        import uuid

        self.url = url
        self.calibrate = calibrate
        self.timeout_s = timeout_s
        self.session_hash = uuid.uuid4().hex[:12]
        dependencies = requests.get(f"{url}/config", timeout=timeout_s).json()["dependencies"]
        stream = next(dep for dep in dependencies if dep["targets"] and dep["targets"][0][1] == "stream")
        self.stream_fn = stream["id"]
        self.mic_id = stream["targets"][0][0]
        self.stop_fn = next(dep["id"] for dep in dependencies if dep["targets"] and dep["targets"][0] == [self.mic_id, "stop_recording"])
        self.event_id: str | None = None
        self.sent = 0
        self.updates: list[tuple[float, list]] = []
        self.completed: dict[str, dict] = {}
        self._listener: threading.Thread | None = None
        self._lock = threading.Lock()
        self._http = requests.Session()

    def _body(self, fn: int, data: list) -> dict:
        return {"data": data, "fn_index": fn, "session_hash": self.session_hash, "event_data": None, "trigger_id": self.mic_id}

    def _listen(self) -> None:
        import json

        with requests.get(f"{self.url}/gradio_api/queue/data", params={"session_hash": self.session_hash}, stream=True, timeout=self.timeout_s) as response:
            for line in response.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                message = json.loads(line[5:])
                kind = message.get("msg")
                if kind in ("process_streaming", "process_generating") and message.get("event_id") == self.event_id:
                    self.updates.append((time.perf_counter(), message["output"]["data"]))
                elif kind == "process_completed":
                    self.completed[message.get("event_id")] = message

    def _join(self, fn: int, data: list) -> str:
        import threading

        response = self._http.post(f"{self.url}/gradio_api/queue/join", json=self._body(fn, data), timeout=self.timeout_s)
        response.raise_for_status()
        event_id = response.json()["event_id"]
        with self._lock:
            # One event stream per session at a time; the server closes it when no event is pending.
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(target=self._listen, daemon=True)
                self._listener.start()
        return event_id

    def upload(self, pcm: np.ndarray, sample_rate: int) -> dict:
        import io

        import soundfile

        buffer = io.BytesIO()
        soundfile.write(buffer, pcm, sample_rate, format="WAV", subtype="PCM_16")
        response = self._http.post(f"{self.url}/gradio_api/upload", files={"files": ("audio.wav", buffer.getvalue(), "audio/wav")}, timeout=self.timeout_s)
        response.raise_for_status()
        return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": "audio.wav"}

    def send(self, pcm: np.ndarray, sample_rate: int) -> None:
        """One slice, as the page sends it every ``stream_every`` seconds."""
        data = [self.upload(pcm, sample_rate), self.calibrate]
        self.sent += 1
        if self.event_id is None:
            self.event_id = self._join(self.stream_fn, data)
        else:
            self._http.post(f"{self.url}/gradio_api/stream/{self.event_id}", json=self._body(self.stream_fn, data), timeout=self.timeout_s)

    def stop(self) -> dict:
        """Wait (up to 5 s) for the slices sent so far to be answered, close the stream and press Stop
        (as the page does); returns the Stop event's completion message."""
        deadline = time.monotonic() + 5.0
        while len(self.updates) < self.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.event_id is not None:
            self._http.post(f"{self.url}/gradio_api/stream/{self.event_id}/close", timeout=self.timeout_s)
        stop_id = self._join(self.stop_fn, [self.calibrate])
        deadline = time.monotonic() + self.timeout_s
        while stop_id not in self.completed:
            if time.monotonic() > deadline:
                raise TimeoutError("Stop did not complete")
            with self._lock:
                if self._listener is None or not self._listener.is_alive():
                    import threading

                    self._listener = threading.Thread(target=self._listen, daemon=True)
                    self._listener.start()
            time.sleep(0.05)
        return self.completed[stop_id]

    def open_heartbeat(self) -> None:
        """Hold the page's heartbeat connection (``/gradio_api/heartbeat/<session>``), as an open tab does;
        :meth:`drop` closes it as a closed tab or a lost connection would."""
        import threading

        self._heartbeat = self._http.get(f"{self.url}/gradio_api/heartbeat/{self.session_hash}", stream=True, timeout=self.timeout_s)

        def read() -> None:
            try:
                for _ in self._heartbeat.iter_lines():
                    pass
            except (requests.RequestException, AttributeError, ValueError):
                pass  # closed by drop(): that is the point

        self._heartbeat_reader = threading.Thread(target=read, daemon=True)
        self._heartbeat_reader.start()

    def drop(self) -> None:
        """Go away without Stop: close the heartbeat (the server then runs the page's unload) and the stream."""
        heartbeat = getattr(self, "_heartbeat", None)
        if heartbeat is not None:
            heartbeat.close()
        self._http.close()

    def play(self, pcm: np.ndarray, sample_rate: int, every_s: float = 0.5, stop_when=None) -> None:
        """Send ``pcm`` in real time, one slice every ``every_s``; ``stop_when(client)`` true ends early."""
        step = int(every_s * sample_rate)
        started = time.perf_counter()
        for index, first in enumerate(range(0, len(pcm) - step + 1, step)):
            time.sleep(max(0.0, started + (index + 1) * every_s - time.perf_counter()))
            self.send(pcm[first : first + step], sample_rate)
            if stop_when is not None and stop_when(self):
                return
