"""Batch prediction throughput: the local engine and Ray Data with 1, 2, ... workers, on one folder.

    python -m benchmarks.batch_engines                                 # bundled model, 150 espeak-ng clips
    python -m benchmarks.batch_engines --clips_dir /data/clips --ray_workers 1,2,4 --backend torch

Every engine runs ``python -m ser.predict`` in this process (``ser.predict.main``) on the same
folder into a fresh output, with the same backend and batch size. Ray is started once, before the
timings (its start-up is printed in the header); each Ray run still starts its own actor pool, which
loads the model once per actor, as a real run does.
Prints, side by side: wall time, clips per second end to end (model loading and actor start
included), when the first rows were in the output, and how many rows are identical (every column)
to the local engine's.
On a machine other processes also use, compare the engines within one run, not across runs.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import REPO_ROOT, machine_header

logger = logging.getLogger("benchmarks.batch_engines")

SENTENCES = (
    "The train to the airport leaves at half past nine.",
    "I waited all evening, and nobody came.",
    "Stop that right now. I told you twice already.",
    "We won the match! I cannot believe it, this is wonderful.",
    "Please put the blue folder back on the shelf.",
    "Nobody told me the meeting had been moved to Friday.",
    "Look at the sky, it is going to rain again.",
    "I really do not want to talk about it.",
)
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+m1", "en-gb+f2")
WATCH_INTERVAL_S = 0.05


@dataclass
class BatchEnginesArguments:
    model: str | None = field(default=None, metadata={"help": "Model folder or hub id. Default: $SER_MODEL, else the bundled model."})
    clips_dir: str | None = field(
        default=None, metadata={"help": "Folder of audio to score. Default: --num_clips espeak-ng sentences, generated once into a temp folder."}
    )
    num_clips: int = field(default=150, metadata={"help": "Clips to generate when --clips_dir is not given."})
    backend: str = field(default="onnx", metadata={"help": "Backend for every engine (the same one, so only the engine differs)."})
    batch_size: int = field(default=16, metadata={"help": "--batch_size for every engine."})
    ray_workers: str = field(default="1,2", metadata={"help": "Comma-separated Ray pool sizes to run."})


def generate_clips(directory: Path, count: int) -> Path:
    """``count`` espeak-ng sentences (voices, speeds and pitches drawn from a fixed seed), 16 kHz,
    written once and reused by later runs."""
    import sys

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from synthetic_speech import ExampleSpec, synthesize

    directory.mkdir(parents=True, exist_ok=True)
    draw = random.Random(0)
    for index in range(count):
        name = f"clip{index:04d}.flac"
        if (directory / name).is_file():
            continue
        spec = ExampleSpec(name, draw.choice(SENTENCES), draw.choice(VOICES), draw.randint(120, 190), draw.randint(20, 80))
        synthesize(spec, directory)
    return directory


@dataclass
class EngineRun:
    tag: str
    layout: str
    wall_s: float
    #: Until the first rows were in the output: model loading (and actor start for Ray) + the first batch.
    first_rows_s: float
    rows: dict[str, list[str]]


def _count_rows(path: Path) -> int:
    try:
        with path.open(newline="") as handle:
            return max(0, sum(1 for _ in handle) - 1)
    except FileNotFoundError:
        return 0


def run_engine(engine: str, workers: int | None, inputs: Path, args: BatchEnginesArguments, scratch: Path, layout: str) -> EngineRun:
    """One ``python -m ser.predict`` run, watching its output for the first rows."""
    from ser.predict import main

    tag = engine if workers is None else f"ray, {workers} worker{'s' if workers > 1 else ''}"
    output = scratch / f"{engine}-{workers}.csv"
    argv = ["--inputs", str(inputs), "--output", str(output), "--backend", args.backend, "--batch_size", str(args.batch_size), "--engine", engine]
    argv += (["--model", args.model] if args.model else []) + (["--ray_workers", str(workers)] if workers else [])
    first: list[float] = []
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(WATCH_INTERVAL_S) and not first:
            if _count_rows(output):
                first.append(time.perf_counter() - started)

    watcher = threading.Thread(target=watch, daemon=True)
    started = time.perf_counter()
    watcher.start()
    code = main(argv)
    wall_s = time.perf_counter() - started
    finished.set()
    watcher.join()
    if code != 0:
        raise RuntimeError(f"{tag} failed: python -m ser.predict {' '.join(argv)}")
    return EngineRun(tag, layout, wall_s, first[0] if first else wall_s, _rows(output))


def _rows(path: Path) -> dict[str, list[str]]:
    with path.open(newline="") as handle:
        return {row[0]: row for row in list(csv.reader(handle))[1:]}


def main() -> None:
    from transformers import HfArgumentParser

    from ser.audio.loader import TARGET_SAMPLE_RATE, AudioError
    from ser.batch.io import list_inputs
    from ser.batch.ray_engine import import_ray, init_ray
    from ser.batch.scoring import decode_file
    from ser.inference.backends import num_threads

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(BatchEnginesArguments).parse_args_into_dataclasses()
    ray = import_ray()
    clips_dir = Path(args.clips_dir) if args.clips_dir else generate_clips(Path(tempfile.gettempdir()) / f"ser-bench-espeak-{args.num_clips}", args.num_clips)
    paths = list_inputs(clips_dir)
    decoded = (decode_file(path, TARGET_SAMPLE_RATE, None, False) for path in paths)
    durations_s = [len(item.audio) / TARGET_SAMPLE_RATE for item in decoded if not isinstance(item, AudioError)]

    started = time.perf_counter()
    init_ray(num_cpus=os.cpu_count())
    ray_start_s = time.perf_counter() - started
    engines = [("local", None)] + [("ray", int(workers)) for workers in args.ray_workers.split(",") if workers.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="ser-bench-batch-") as scratch:
        for engine, workers in engines:
            layout = f"1 process x {num_threads()} threads" if workers is None else f"{workers} actor{'s' if workers > 1 else ''} x 1 thread"
            logger.warning("Running %s (%s) on %d clips", engine, layout, len(paths))
            results.append(run_engine(engine, workers, clips_dir, args, Path(scratch), layout))
    ray.shutdown()

    audio_s = sum(durations_s)
    print(machine_header())
    print(f"cores: {os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable   Ray {ray.__version__} (local runtime, {os.cpu_count()} CPUs, started in {ray_start_s:.1f} s)")
    print(f"model: {args.model or 'bundled / $SER_MODEL'}   backend: {args.backend}   batch size: {args.batch_size}")
    print(f"clips: {len(paths)} files ({len(durations_s)} decodable) in {clips_dir}, {audio_s:.0f} s of audio (mean {audio_s / len(durations_s):.2f} s)")
    print()
    print("| engine | layout | wall s | clips/s | first rows written after s | rows identical to local |")
    print("|---|---|---|---|---|---|")
    local_rows = results[0].rows
    for run in results:
        same = sum(run.rows.get(path) == row for path, row in local_rows.items())
        print(f"| {run.tag} | {run.layout} | {run.wall_s:.1f} | {len(paths) / run.wall_s:.1f} | {run.first_rows_s:.1f} | {same}/{len(local_rows)} |")


if __name__ == "__main__":
    main()
