"""Load test of ``python app.py`` on loopback: N concurrent gradio_client clients x M requests.

    python -m benchmarks.load_test                               # bundled models/ser-multicorpus, 16 x 50
    python -m benchmarks.load_test --model runs/cnn --clients 4 --requests_per_client 10

Starts the app on a free 127.0.0.1 port (its own GRADIO_TEMP_DIR), warms it up, then runs the
clients, each sending an upload of ``--clip`` through ``Client.predict`` in a loop. Bounded: it
stops by itself after ``--max_wall_s`` (requests not yet started are reported as not run) and
always stops the server. Reports errors, client-side latency p50/p95/max, throughput, server RSS
(after warm-up, half-way, at the end, peak), what ``/metrics`` counted, and how many uploaded
files are left in the server's upload folder (should be 0). Nothing leaves the machine.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from benchmarks.common import percentile
from ser.inference.predictor import BUNDLED_MODEL_DIR
from ser.serving.devserver import REPO_ROOT, running_app

logger = logging.getLogger("benchmarks.load_test")


@dataclass
class LoadTestArguments:
    model: str | None = field(
        default=None, metadata={"help": f"Model folder or hub id. Default: the bundled {BUNDLED_MODEL_DIR.name} if present."}
    )
    clients: int = field(default=16, metadata={"help": "Concurrent gradio_client clients."})
    requests_per_client: int = field(default=50, metadata={"help": "Requests each client sends, one after the other."})
    clip: str = field(
        default=str(REPO_ROOT / "examples" / "neutral_actor23.flac"),
        metadata={"help": "Audio sent with every request (uploaded under another name, as a user would)."},
    )
    max_wall_s: float = field(default=900.0, metadata={"help": "Stop starting requests after this many seconds."})
    app_args: str = field(
        default="", metadata={"help": "Extra app.py flags, space-separated (e.g. '--max_queue_size 32')."}
    )
    output_json: str | None = field(default=None, metadata={"help": "Also write the results here."})


@dataclass
class LoadTestResult:
    model: str
    clients: int
    requests_planned: int
    requests_done: int
    errors: int
    error_examples: list[str]
    not_run: int
    wall_s: float
    throughput_rps: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    server_handler_mean_ms: float
    rss_after_warmup_mb: float
    rss_half_way_mb: float
    rss_end_mb: float
    rss_peak_mb: float
    metrics_answered: float
    metrics_rejected: float
    uploads_left: int


def scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            key = sample.name + "".join(f"[{value}]" for value in sample.labels.values())
            values[key] = sample.value
    return values


def run_load(args: LoadTestArguments, model: str) -> LoadTestResult:
    from gradio_client import Client, handle_file

    work_dir = Path(tempfile.mkdtemp(prefix="ser-load-test-"))
    upload_dir, log_path = work_dir / "gradio_tmp", work_dir / "app.log"
    # A copy under another name: a user upload, not one of the app's example clips (which are kept).
    clip = work_dir / f"load_test_clip{Path(args.clip).suffix}"
    shutil.copy(args.clip, clip)
    with running_app(model, log_path, args.app_args.split(), {"GRADIO_TEMP_DIR": str(upload_dir)}) as server:
        url = server.url
        Client(url, verbose=False).predict(handle_file(str(clip)), api_name="/predict")  # warm-up
        rss_start = server.rss_mb()[0]
        before = scrape(url)
        latencies: list[float] = []
        errors: list[str] = []
        done = 0
        half_rss: list[float] = []
        peak = [rss_start]
        lock = threading.Lock()
        planned = args.clients * args.requests_per_client
        started_at = time.monotonic()
        stop_at = started_at + args.max_wall_s
        finished = threading.Event()

        def watch_rss() -> None:
            while not finished.wait(0.5):
                peak[0] = max(peak[0], server.rss_mb()[0])

        def client_loop() -> None:
            nonlocal done
            client = Client(url, verbose=False)
            for _ in range(args.requests_per_client):
                if time.monotonic() > stop_at:
                    return
                began = time.perf_counter()
                try:
                    client.predict(handle_file(str(clip)), api_name="/predict")
                    error = None
                except Exception as exception:  # every failure counts; the first few are kept
                    error = f"{type(exception).__name__}: {exception}"[:300]
                with lock:
                    latencies.append(time.perf_counter() - began)
                    done += 1
                    if error is not None:
                        errors.append(error)
                    if done == planned // 2:
                        half_rss.append(server.rss_mb()[0])

        watcher = threading.Thread(target=watch_rss, daemon=True)
        watcher.start()
        threads = [threading.Thread(target=client_loop, name=f"client-{index}") for index in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall_s = time.monotonic() - started_at
        finished.set()
        rss_end = server.rss_mb()[0]
        after = scrape(url)
        example_names = {path.name for path in (REPO_ROOT / "examples").iterdir()}
        uploads_left = sum(1 for path in upload_dir.rglob("*") if path.is_file() and path.name not in example_names)
    answered = after.get("ser_requests_total[answered]", 0) - before.get("ser_requests_total[answered]", 0)
    handler_count = after["ser_request_latency_seconds_count"] - before["ser_request_latency_seconds_count"]
    handler_sum = after["ser_request_latency_seconds_sum"] - before["ser_request_latency_seconds_sum"]
    ms = [1000 * value for value in latencies] or [float("nan")]
    shutil.rmtree(work_dir, ignore_errors=True)
    return LoadTestResult(
        model=model,
        clients=args.clients,
        requests_planned=planned,
        requests_done=done,
        errors=len(errors),
        error_examples=errors[:5],
        not_run=planned - done,
        wall_s=round(wall_s, 1),
        throughput_rps=round(done / wall_s, 2) if wall_s > 0 else 0.0,
        latency_p50_ms=round(statistics.median(ms), 1),
        latency_p95_ms=round(percentile(ms, 0.95), 1),
        latency_max_ms=round(max(ms), 1),
        server_handler_mean_ms=round(1000 * handler_sum / handler_count, 1) if handler_count else float("nan"),
        rss_after_warmup_mb=round(rss_start, 1),
        rss_half_way_mb=round(half_rss[0], 1) if half_rss else float("nan"),
        rss_end_mb=round(rss_end, 1),
        rss_peak_mb=round(peak[0], 1),
        metrics_answered=answered,
        metrics_rejected=after.get("ser_requests_total[rejected_input]", 0) - before.get("ser_requests_total[rejected_input]", 0),
        uploads_left=uploads_left,
    )


def main() -> None:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    (args,) = HfArgumentParser(LoadTestArguments).parse_args_into_dataclasses()
    model = args.model or (str(BUNDLED_MODEL_DIR) if (BUNDLED_MODEL_DIR / "config.json").is_file() else None)
    if model is None:
        raise SystemExit(f"No model: the bundled {BUNDLED_MODEL_DIR} is missing; pass --model PATH_OR_HUB_ID.")
    result = run_load(args, model)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(asdict(result), indent=1))
    print(json.dumps(asdict(result), indent=1))


if __name__ == "__main__":
    main()
