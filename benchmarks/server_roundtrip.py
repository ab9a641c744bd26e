"""End to end through the server: start app.py, drive ``/predict`` with gradio_client, compare with in-process.

    python -m benchmarks.server_roundtrip                       # random-init wav2vec2-base, default backend
    python -m benchmarks.server_roundtrip --model models/ser-ravdess --backend torch

Starts ``app.py --model M --port P`` (backend passed as ``$SER_BACKEND``), waits until it answers,
then sends one 3 s clip from 1 and from 8 concurrent clients and prints round-trip p50/p95 next
to the in-process ``classify_file`` latency (decode included) of the same clip, the error count
(must be 0) and the server's RSS. The clip is a real RAVDESS recording when ../shared/data is
there (so the app's speech-quality gate passes it as it would a user's); otherwise a synthetic
tone, with the gate switched off. Requests go to 127.0.0.1 only, and the server is stopped at the end.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import DEFAULT_REAL_CLIPS_DIR, percentile, random_wav2vec2_base, speech_like_clip, timed
from ser.backends import BACKEND_ENV_VAR, BACKENDS, resolve_backend
from ser.devserver import running_app
from ser.predictor import EmotionClassifier

logger = logging.getLogger("benchmarks.server_roundtrip")

API_NAME = "/predict"


@dataclass
class RoundTripArguments:
    model: str | None = field(default=None, metadata={"help": "Model folder or hub id. Default: a random-init wav2vec2-base."})
    backend: str | None = field(default=None, metadata={"help": f"One of {', '.join(BACKENDS)} (default: ${BACKEND_ENV_VAR}, else the fastest)."})
    clients: str = field(default="1,8", metadata={"help": "Concurrent client counts to try, comma-separated."})
    requests_per_client: int = field(default=8, metadata={"help": "Requests each client sends, one after another."})
    in_process_repeats: int = field(default=15, metadata={"help": "In-process classify_file calls to time."})
    startup_timeout_s: float = field(default=900.0, metadata={"help": "How long to wait for the app to come up."})
    app_args: str = field(default="", metadata={"help": "Extra arguments for app.py, space-separated."})


def _clip_path(scratch: Path) -> tuple[Path, bool]:
    """A ~3 s clip to send, and whether it is real speech."""
    real = sorted(DEFAULT_REAL_CLIPS_DIR.glob("Neutral/*.flac")) if DEFAULT_REAL_CLIPS_DIR.is_dir() else []
    if real:
        return real[0], True
    import soundfile

    path = scratch / "clip3s.wav"
    soundfile.write(str(path), speech_like_clip(3.0, seed=0), 16_000)
    return path, False


def _drive(url: str, clip: Path, clients: int, requests_per_client: int) -> tuple[list[float], list[str]]:
    from gradio_client import Client, handle_file

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    connected = [Client(url, verbose=False, download_files=False) for _ in range(clients)]

    def worker(client) -> None:
        for _ in range(requests_per_client):
            started = time.perf_counter()
            try:
                client.predict(handle_file(str(clip)), api_name=API_NAME)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
            except Exception as error:  # noqa: BLE001  (any failure is an error to count and show)
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=worker, args=(client,)) for client in connected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


def main() -> None:
    from transformers import AutoConfig, HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    (args,) = HfArgumentParser(RoundTripArguments).parse_args_into_dataclasses()
    model = args.model or str(random_wav2vec2_base())
    backend = resolve_backend(args.backend, AutoConfig.from_pretrained(model).model_type)

    with tempfile.TemporaryDirectory() as scratch:
        clip, is_speech = _clip_path(Path(scratch))
        logger.info("Clip: %s", clip)

        # In-process first (server not started yet), then the server alone on the CPU.
        classifier = EmotionClassifier.from_pretrained(model, backend=backend)
        classifier.classify_file(clip)
        in_process = [timed(lambda: classifier.classify_file(clip)) for _ in range(args.in_process_repeats)]
        del classifier

        app_args = [] if is_speech else ["--quality_gate", "false"]  # the VAD would (rightly) refuse a synthetic tone
        app_args += args.app_args.split()
        log_path = Path(scratch) / "app.log"
        with running_app(model, log_path, app_args, {BACKEND_ENV_VAR: backend}, args.startup_timeout_s) as server:
            _drive(server.url, clip, 1, 2)  # warm-up: first request compiles routes, allocates arenas
            results = {}
            for clients in (int(value) for value in args.clients.split(",")):
                logger.info("%d concurrent client(s) x %d requests", clients, args.requests_per_client)
                results[clients] = _drive(server.url, clip, clients, args.requests_per_client)
            rss_now, rss_peak = server.rss_mb()

    p50_in = 1000 * percentile(in_process, 0.5)
    print(f"\nModel: {model}   backend: {backend}   clip: {clip.name} ({'speech' if is_speech else 'synthetic, gate off'})")
    print(f"in-process classify_file (decode + model): p50 {p50_in:.0f} ms  p95 {1000 * percentile(in_process, 0.95):.0f} ms")
    for clients, (latencies, errors) in results.items():
        if latencies:
            p50, p95 = 1000 * percentile(latencies, 0.5), 1000 * percentile(latencies, 0.95)
            print(
                f"server round trip, {clients} client(s): p50 {p50:.0f} ms  p95 {p95:.0f} ms  "
                f"(p50 - in-process p50 = {p50 - p50_in:+.0f} ms)  requests {len(latencies)}  errors {len(errors)}"
            )
        else:
            print(f"server round trip, {clients} client(s): no successful request; errors {len(errors)}")
        for error in errors[:3]:
            print(f"  error: {error}")
    print(f"app RSS: {rss_now:.0f} MB now, {rss_peak:.0f} MB peak")
    if any(errors for _, errors in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
