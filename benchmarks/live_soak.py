"""Live sessions do not leave memory or audio behind: 100 live sessions of 20-45 s, in rounds of four,
beside clip traffic, against one ``app.py``; the server's RSS every 10 sessions.

    python -m benchmarks.live_soak                          # bundled model, 100 sessions, 2x real time
    python -m benchmarks.live_soak --sessions 20 --speed 1  # shorter, in real time

Each session is a :class:`ser.serving.devserver.LiveStreamClient` (the page's streaming protocol,
with the page's heartbeat connection) streaming unseen RAVDESS actors (21-24). Every fifth session
goes away without Stop (its heartbeat closes, as when a tab is closed or the network drops); the
others press Stop, which scores the whole 20-45 s recording (the lengths where Stop used to fail).
``--speed 2`` sends one second of audio every half second, so a session records 20-45 s in half
that time (Gradio then sometimes replaces a waiting slice by a newer one, the case that used to
leave an uploaded slice on disk). One client sends clips to ``/predict`` all along.

Printed: RSS (current and peak) after every 10 sessions; Stops answered and failed; live sessions
still recording (``/health``); the clip requests answered; Gradio temp files left at the end (the
example clips Gradio caches are not counted).

Targets (issue 29): RSS after 100 sessions within 30 MB of RSS after 10; no audio left behind.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from benchmarks.common import DEFAULT_REAL_CLIPS_DIR, machine_header
from ser.inference.predictor import BUNDLED_MODEL_DIR
from ser.serving.devserver import LiveStreamClient, ravdess_speech, running_app

logger = logging.getLogger("benchmarks.live_soak")

ACTORS = (21, 22, 23, 24)
EMOTIONS = ("Angry", "Sad", "Happy", "Neutral", "Fearful")
RATE = 48_000
STREAM_EVERY_S = 0.5


@dataclass
class SoakArguments:
    model: str = field(default=str(BUNDLED_MODEL_DIR), metadata={"help": "Model folder (default: the bundled model)."})
    sessions: int = field(default=100, metadata={"help": "Live sessions in all, run in rounds of --round_size."})
    round_size: int = field(default=4, metadata={"help": "Sessions streaming at once (the app's live limit is 4)."})
    min_seconds: float = field(default=20.0, metadata={"help": "Shortest recording, seconds of audio."})
    max_seconds: float = field(default=45.0, metadata={"help": "Longest recording, seconds of audio."})
    speed: float = field(default=2.0, metadata={"help": "Audio seconds sent per wall-clock second (1 = real time)."})
    drop_every: int = field(default=5, metadata={"help": "Every Nth session goes away without Stop (0: none)."})
    seed: int = field(default=0, metadata={"help": "Recording lengths are drawn from this seed."})


@dataclass
class Tally:
    stops_answered: int = 0
    stops_failed: int = 0
    dropped: int = 0
    clips_answered: int = 0
    clips_failed: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _session(url: str, pcm: np.ndarray, seconds: float, speed: float, drop: bool, tally: Tally) -> None:
    client = LiveStreamClient(url, calibrate=True, timeout_s=120)
    client.open_heartbeat()
    step = int(STREAM_EVERY_S * speed * RATE)
    audio = pcm[: int(seconds * RATE)]
    started = time.perf_counter()
    for index, first in enumerate(range(0, len(audio), step)):
        time.sleep(max(0.0, started + index * STREAM_EVERY_S - time.perf_counter()))
        client.send(audio[first : first + step], RATE)
    time.sleep(1.0)
    if drop:
        client.drop()
        with tally.lock:
            tally.dropped += 1
        return
    stop = client.stop()
    client.drop()  # the tab closes afterwards
    with tally.lock:
        if stop.get("success"):
            tally.stops_answered += 1
        else:
            tally.stops_failed += 1
            tally.failures.append(str(stop)[:200])


def _clip_traffic(url: str, clips: list[Path], done: threading.Event, tally: Tally) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    index = 0
    while not done.is_set():
        try:
            client.predict(handle_file(str(clips[index % len(clips)])), api_name="/predict")
            with tally.lock:
                tally.clips_answered += 1
        except Exception as error:  # a refused or failed clip is counted, not fatal
            with tally.lock:
                tally.clips_failed += 1
                tally.failures.append(f"clip: {error}"[:200])
        index += 1
        done.wait(0.2)


def main() -> None:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(SoakArguments).parse_args_into_dataclasses()
    if not DEFAULT_REAL_CLIPS_DIR.is_dir():
        raise SystemExit(f"Needs RAVDESS in {DEFAULT_REAL_CLIPS_DIR} (the VAD gate only lets real speech through).")
    print(machine_header())
    speech = [ravdess_speech(DEFAULT_REAL_CLIPS_DIR, EMOTIONS, actor, clips_per_emotion=3) for actor in ACTORS]
    clips = sorted((DEFAULT_REAL_CLIPS_DIR / "Angry").glob("*-2[1-4].*"))[:8] + sorted((DEFAULT_REAL_CLIPS_DIR / "Sad").glob("*-2[1-4].*"))[:8]
    lengths = np.random.default_rng(args.seed).uniform(args.min_seconds, args.max_seconds, args.sessions)
    print(
        f"model {Path(args.model).name}; {args.sessions} live sessions of {args.min_seconds:g}-{args.max_seconds:g} s "
        f"(mean {lengths.mean():.1f} s) in rounds of {args.round_size}, {args.speed:g}x real time, every "
        f"{args.drop_every or 'no'}th dropped without Stop; one client sending /predict clips meanwhile"
    )
    examples = {path.name for path in (Path(__file__).resolve().parent.parent / "examples").iterdir()}
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="ser-live-soak-") as scratch:
        temp_dir = Path(scratch) / "gradio"
        with running_app(args.model, Path(scratch) / "app.log", (), {"GRADIO_TEMP_DIR": str(temp_dir)}) as server:
            done = threading.Event()
            traffic = threading.Thread(target=_clip_traffic, args=(server.url, clips, done, tally), daemon=True)
            traffic.start()
            rss: dict[int, tuple[float, float]] = {}
            next_mark = 10
            started = time.perf_counter()
            for first in range(0, args.sessions, args.round_size):
                indices = range(first, min(args.sessions, first + args.round_size))
                threads = [
                    threading.Thread(
                        target=_session,
                        args=(server.url, speech[index % len(speech)], float(lengths[index]), args.speed,
                              bool(args.drop_every) and (index + 1) % args.drop_every == 0, tally),
                    )
                    for index in indices
                ]
                for thread in threads:
                    thread.start()
                    time.sleep(STREAM_EVERY_S / len(threads))
                for thread in threads:
                    thread.join()
                finished = indices[-1] + 1
                if finished >= next_mark or finished == args.sessions:
                    time.sleep(2.0)  # the dropped sessions' unload runs in the background
                    rss[finished] = server.rss_mb()
                    health = requests.get(f"{server.url}/health", timeout=10).json()["live_sessions"]
                    print(
                        f"  after {finished:3d} sessions ({time.perf_counter() - started:5.0f} s): RSS {rss[finished][0]:.0f} MB "
                        f"(peak {rss[finished][1]:.0f} MB); recording now {health['recording']}; clips answered {tally.clips_answered}",
                        flush=True,
                    )
                    next_mark = (finished // 10 + 1) * 10
            done.set()
            traffic.join(timeout=60)
            time.sleep(2.0)
            left = [path for path in temp_dir.rglob("*") if path.is_file() and path.name not in examples]
            health = requests.get(f"{server.url}/health", timeout=10).json()["live_sessions"]
    marks = sorted(rss)
    first_mark, last_mark = marks[0], marks[-1]
    growth = rss[last_mark][0] - rss[first_mark][0]
    print(f"\nStops answered {tally.stops_answered}, failed {tally.stops_failed}; dropped without Stop {tally.dropped}; "
          f"still recording at the end {health['recording']}")
    print(f"clips answered {tally.clips_answered}, failed {tally.clips_failed}")
    for failure in tally.failures[:5]:
        print(f"  failure: {failure}")
    print(f"RSS after {last_mark} sessions minus after {first_mark}: {growth:+.1f} MB (target: within 30 MB)")
    print(f"Gradio temp files left: {len(left)}" + (f" {[path.name for path in left][:5]}" if left else ""))


if __name__ == "__main__":
    main()
