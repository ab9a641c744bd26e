"""End to end through the server: start app.py per backend, drive ``/predict`` with gradio_client, side by side.

    python -m benchmarks.server_roundtrip                       # random-init wav2vec2-base, auto vs torch
    python -m benchmarks.server_roundtrip --model models/ser-ravdess --backends auto,torch,onnx
    python -m benchmarks.server_roundtrip --busy_cores 1      # with one core taken by another process

Starts one ``app.py --model M --port P`` per backend (passed as ``$SER_BACKEND``; ``auto`` is the
automatic choice), waits until each answers ``/health`` (which says what ``auto`` chose and why),
then sends one ~3 s clip: from 1 client, alternating request by request between the servers so load
from other processes hits them alike, then from N concurrent clients, server by server. Prints the
CPU header, round-trip p50/p95 with the speed ratio to ``torch``, the in-process ``classify_file``
latency (decode included) of the same clip, the error count (must be 0) and each server's RSS. The
clip is a real RAVDESS recording when ../shared/data is there (so the app's speech-quality gate
passes it as it would a user's); otherwise a synthetic tone, with the gate switched off. Requests
go to 127.0.0.1 only, and the servers are stopped at the end.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from benchmarks.common import DEFAULT_REAL_CLIPS_DIR, busy_cores, machine_header, percentile, random_wav2vec2_base, speech_like_clip, timed
from ser.inference.backends import AUTO, BACKEND_ENV_VAR, BACKENDS
from ser.inference.predictor import EmotionClassifier
from ser.serving.devserver import running_app

logger = logging.getLogger("benchmarks.server_roundtrip")

API_NAME = "/predict"


@dataclass
class RoundTripArguments:
    model: str | None = field(default=None, metadata={"help": "Model folder or hub id. Default: a random-init wav2vec2-base."})
    backends: str = field(default=f"{AUTO},torch", metadata={"help": f"Comma-separated, from {AUTO}, {', '.join(BACKENDS)}: one server each."})
    clients: str = field(default="1,8", metadata={"help": "Concurrent client counts to try, comma-separated (1 is interleaved across servers)."})
    requests_per_client: int = field(default=8, metadata={"help": "Requests each client sends, one after another."})
    in_process_repeats: int = field(default=15, metadata={"help": "In-process classify_file calls to time."})
    startup_timeout_s: float = field(default=900.0, metadata={"help": "How long to wait for the app to come up."})
    app_args: str = field(default="", metadata={"help": "Extra arguments for app.py, space-separated."})
    busy_cores: int = field(
        default=0,
        metadata={"help": "Cores kept busy by spinning processes while the in-process calls and the requests are timed "
                  "(a small machine shared with other work). The servers choose their backend before, at start."},
    )


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


def _interleaved_single_client(urls: dict[str, str], clip: Path, requests_per_server: int) -> dict[str, tuple[list[float], list[str]]]:
    results: dict[str, tuple[list[float], list[str]]] = {name: ([], []) for name in urls}
    for _ in range(requests_per_server):
        for name, url in urls.items():
            latencies, errors = _drive(url, clip, 1, 1)
            results[name][0].extend(latencies)
            results[name][1].extend(errors)
    return results


def main() -> None:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    (args,) = HfArgumentParser(RoundTripArguments).parse_args_into_dataclasses()
    model = args.model or str(random_wav2vec2_base())
    names = [name.strip().lower() for name in args.backends.split(",") if name.strip()]
    client_counts = [int(value) for value in args.clients.split(",")]

    with tempfile.TemporaryDirectory() as scratch:
        clip, is_speech = _clip_path(Path(scratch))
        logger.info("Clip: %s", clip)

        # In-process first (no server started yet), one backend after the other.
        in_process: dict[str, list[float]] = {}
        for name in names:
            classifier = EmotionClassifier.from_pretrained(model, backend=name)
            classifier.classify_file(clip)
            with busy_cores(args.busy_cores):
                in_process[name] = [timed(lambda: classifier.classify_file(clip)) for _ in range(args.in_process_repeats)]
            del classifier

        app_args = [] if is_speech else ["--quality_gate", "false"]  # the VAD would (rightly) refuse a synthetic tone
        app_args += args.app_args.split()
        with contextlib.ExitStack() as stack:
            servers = {
                name: stack.enter_context(
                    running_app(model, Path(scratch) / f"app-{name}.log", app_args, {BACKEND_ENV_VAR: name}, args.startup_timeout_s)
                )
                for name in names
            }
            health = {name: requests.get(f"{server.url}/health", timeout=10).json() for name, server in servers.items()}
            urls = {name: server.url for name, server in servers.items()}
            for url in urls.values():
                _drive(url, clip, 1, 2)  # warm-up: first request compiles routes, allocates arenas
            results: dict[int, dict[str, tuple[list[float], list[str]]]] = {}
            stack.enter_context(busy_cores(args.busy_cores))
            for clients in client_counts:
                logger.info("%d concurrent client(s) x %d requests per server", clients, args.requests_per_client)
                if clients == 1:
                    results[1] = _interleaved_single_client(urls, clip, args.requests_per_client)
                else:
                    results[clients] = {name: _drive(url, clip, clients, args.requests_per_client) for name, url in urls.items()}
            rss = {name: server.rss_mb() for name, server in servers.items()}

    automatic = health.get(AUTO)
    print()
    print(machine_header(f"{automatic['backend']} ({automatic.get('backend_reason')})" if automatic else None))
    print(f"Model: {model}   clip: {clip.name} ({'speech' if is_speech else 'synthetic, gate off'})")
    if args.busy_cores:
        print(f"Timed with {args.busy_cores} core(s) kept busy by spinning processes (--busy_cores)")
    reference = "torch" if "torch" in names else names[0]
    p50 = {
        clients: {name: 1000 * percentile(latencies, 0.5) for name, (latencies, _) in per.items() if latencies}
        for clients, per in results.items()
    }
    for name in names:
        serving = health[name].get("backend", "?")
        label = f"{name}={serving}" if name == AUTO else name
        in_p50 = 1000 * percentile(in_process[name], 0.5)
        print(f"{label:<16} in-process classify_file p50 {in_p50:.0f} ms  p95 {1000 * percentile(in_process[name], 0.95):.0f} ms")
        for clients, per in results.items():
            latencies, errors = per[name]
            if not latencies:
                print(f"{'':<16} {clients} client(s): no successful request; errors {len(errors)}")
                continue
            ratio = p50[clients][reference] / p50[clients][name] if reference in p50[clients] else float("nan")
            print(
                f"{'':<16} {clients} client(s): round trip p50 {p50[clients][name]:.0f} ms  p95 {1000 * percentile(latencies, 0.95):.0f} ms  "
                f"{ratio:.2f}x {reference}  (p50 - in-process p50 = {p50[clients][name] - in_p50:+.0f} ms)  "
                f"requests {len(latencies)}  errors {len(errors)}"
            )
            for error in errors[:3]:
                print(f"{'':<18}error: {error}")
        print(f"{'':<16} app RSS: {rss[name][0]:.0f} MB now, {rss[name][1]:.0f} MB peak")
    if any(errors for per in results.values() for _, errors in per.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
