"""Live mode under load: 1 and 4 sessions streaming real speech into ``app.py`` at once, over HTTP.

    python -m benchmarks.live                        # bundled model, 1 then 4 sessions, 30 s each
    python -m benchmarks.live --sessions 1,2,4,6 --seconds 20

Each session is a :class:`ser.serving.devserver.LiveStreamClient` (Gradio 6's streaming protocol,
what the page does; browsers are left out because four headless Chromiums would take the two cores
the server is measured on), sending a 48 kHz int16 slice every 0.5 s in real time: unseen RAVDESS
actors (21-24), angry, sad, happy and neutral clips in turn, pauses included, as a visitor speaking
would. One fresh server per session count. Printed per count:

- update interval: p50 and max gap between updates a session receives, and the longest gap between
  bar updates while speaking (two voiced updates with no "listening…" between them);
- server time per update, as the handler reports it ("update N ms"): p50 / p95, voiced and all;
- CPU of the server process over the streaming, as a share of the whole machine (all cores), per
  session and in total;
- Stop: time to the whole-recording answer;
- Gradio temp files left once every session stopped (the example clips Gradio caches are not counted).

Targets (issue 24): bars at least once a second while speaking; p95 <= 150 ms; one session <= 30 %
of the machine; with 4 sessions each still updated at least every 1.5 s; no audio left behind.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_REAL_CLIPS_DIR, machine_header, percentile
from ser.inference.predictor import BUNDLED_MODEL_DIR
from ser.serving.devserver import LiveStreamClient, process_cpu_s, ravdess_speech, running_app

logger = logging.getLogger("benchmarks.live")

UPDATE_MS = re.compile(r"update (\d+) ms")
ACTORS = (21, 22, 23, 24)
EMOTIONS = ("Angry", "Sad", "Happy", "Neutral")


@dataclass
class LiveBenchmarkArguments:
    model: str = field(default=str(BUNDLED_MODEL_DIR), metadata={"help": "Model folder (default: the bundled model)."})
    sessions: str = field(default="1,4", metadata={"help": "Session counts to run, comma-separated; one server each."})
    seconds: float = field(default=30.0, metadata={"help": "Seconds each session streams."})
    calibrate: bool = field(default=True, metadata={"help": "Sessions stream with calibration on (the page's default)."})


@dataclass
class SessionResult:
    arrivals: list[float]
    statuses: list[str]
    stop_s: float
    stop_text: str


def _status(outputs: list) -> str:
    value = outputs[1]
    return value if isinstance(value, str) else ""


def _run_session(url: str, pcm: np.ndarray, seconds: float, calibrate: bool, results: list, index: int) -> None:
    client = LiveStreamClient(url, calibrate=calibrate)
    client.play(pcm[: int(seconds * 48_000)], 48_000)
    time.sleep(1.0)  # the last update
    started = time.perf_counter()
    stop = client.stop()
    stop_s = time.perf_counter() - started
    text = str(stop.get("output", {}).get("data", [""])[0]) if stop.get("success") else f"failed: {stop}"
    updates = [(arrival, _status(outputs)) for arrival, outputs in client.updates if _status(outputs)]
    results[index] = SessionResult([arrival for arrival, _ in updates], [status for _, status in updates], stop_s, text)


def _speaking_gaps(result: SessionResult) -> list[float]:
    """Gaps between consecutive voiced updates with no "listening…" between them."""
    gaps = []
    for (first, status_a), (second, status_b) in zip(zip(result.arrivals, result.statuses), zip(result.arrivals[1:], result.statuses[1:])):
        if status_a.startswith("**Live:") and status_b.startswith("**Live:"):
            gaps.append(second - first)
    return gaps


def _temp_files(directory: Path, examples: set[str]) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file() and path.name not in examples]


def run_count(args: LiveBenchmarkArguments, count: int, speech: list[np.ndarray], scratch: Path) -> None:
    temp_dir = scratch / f"gradio-{count}"
    temp_dir.mkdir()
    examples = {path.name for path in (Path(__file__).resolve().parent.parent / "examples").iterdir()}
    with running_app(args.model, scratch / f"app-{count}.log", (), {"GRADIO_TEMP_DIR": str(temp_dir)}) as server:
        results: list[SessionResult | None] = [None] * count
        threads = [
            threading.Thread(target=_run_session, args=(server.url, speech[index % len(speech)], args.seconds, args.calibrate, results, index))
            for index in range(count)
        ]
        cpu_before, wall_before = process_cpu_s(server.process.pid), time.perf_counter()
        for thread in threads:
            thread.start()
            time.sleep(0.5 / count)  # sessions out of phase, as visitors are
        for thread in threads:
            thread.join()
        cpu_share = (process_cpu_s(server.process.pid) - cpu_before) / (time.perf_counter() - wall_before) / os.cpu_count()
        time.sleep(2.0)
        left = _temp_files(temp_dir, examples)
    done = [result for result in results if result is not None]
    gaps = [gap for result in done for gap in np.diff(result.arrivals)]
    speaking = [gap for result in done for gap in _speaking_gaps(result)]
    server_ms = [float(m.group(1)) for result in done for status in result.statuses if (m := UPDATE_MS.search(status))]
    voiced_ms = [float(m.group(1)) for result in done for status in result.statuses if status.startswith("**Live:") and (m := UPDATE_MS.search(status))]
    per_session_max = [round(float(np.max(np.diff(result.arrivals))), 2) for result in done if len(result.arrivals) > 1]
    print(f"\n{count} session(s), {args.seconds:g} s each ({len(done)} finished):")
    print(f"  updates per session: {statistics.mean(len(result.arrivals) for result in done):.0f}; "
          f"gap p50 {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s (per session: {per_session_max})")
    print(f"  bar updates while speaking: max gap {max(speaking):.2f} s, p95 {percentile(speaking, 0.95):.2f} s "
          f"({len(voiced_ms)} voiced updates of {len(server_ms)})")
    print(f"  server time per update: all p50 {statistics.median(server_ms):.0f} ms p95 {percentile(server_ms, 0.95):.0f} ms; "
          f"voiced p50 {statistics.median(voiced_ms):.0f} ms p95 {percentile(voiced_ms, 0.95):.0f} ms")
    print(f"  server CPU: {100 * cpu_share:.1f} % of the {os.cpu_count()}-core machine in total, {100 * cpu_share / count:.1f} % per session")
    print(f"  Stop: whole-recording answer in p50 {statistics.median(r.stop_s for r in done):.2f} s, max {max(r.stop_s for r in done):.2f} s; "
          f"e.g. {done[0].stop_text.splitlines()[0][:100]!r}")
    print(f"  Gradio temp files left after Stop: {len(left)}" + (f" {[str(p.relative_to(temp_dir)) for p in left][:5]}" if left else ""))


def main() -> None:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(LiveBenchmarkArguments).parse_args_into_dataclasses()
    if not DEFAULT_REAL_CLIPS_DIR.is_dir():
        raise SystemExit(f"Needs RAVDESS in {DEFAULT_REAL_CLIPS_DIR} (the VAD gate only lets real speech through).")
    print(machine_header())
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes on this machine count against the numbers)")
    speech = [ravdess_speech(DEFAULT_REAL_CLIPS_DIR, EMOTIONS, actor, clips_per_emotion=3) for actor in ACTORS]
    print(f"model {Path(args.model).name}; speech: RAVDESS actors {ACTORS}, {', '.join(EMOTIONS)} in turn, "
          f"{min(len(pcm) for pcm in speech) / 48_000:.0f}+ s each at 48 kHz int16, -12 dBFS peak; calibration {'on' if args.calibrate else 'off'}")
    with tempfile.TemporaryDirectory(prefix="ser-live-bench-") as scratch:
        for count in (int(value) for value in args.sessions.split(",")):
            run_count(args, count, speech, Path(scratch))


if __name__ == "__main__":
    main()
