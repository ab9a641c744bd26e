"""In-process serving benchmark: the transformers pipeline (fp32 baseline) vs each project backend.

    python -m benchmarks.serving                          # random-init wav2vec2-base, this CPU's backends
    python -m benchmarks.serving --model models/ser-ravdess --real_clips 0   # any other model
    benchmarks/cpu_mask/run python -m benchmarks.serving  # as on an AVX2-only CPU (CPUID masked for every library)
    python -m benchmarks.serving --busy_cores 1           # with one core taken by another process

The header names the CPU, PyTorch's kernel level, bf16 / VNNI / AMX, the emulation settings in
force and the automatic choice (``auto``: what ``EmotionClassifier.from_pretrained`` picks here,
with its reason). By default the engines are ``auto`` plus every backend the automatic choice
would consider on this machine (``bf16`` only with hardware bf16; ``--backends`` overrides).
Prints, side by side: median/min/max latency for 1, 3 and 10 s clips, the ratio to the pipeline,
batch throughput, peak RSS (each engine in a fresh process), top-1 agreement with the torch fp32
reference and the largest probability difference, and what decoding a 3 s 48 kHz wav/mp3 costs.
Engines are timed interleaved (one call each, round after round), so load from other processes
on the machine hits them all alike: compare ratios, not absolute numbers, on a shared machine.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import (
    DEFAULT_REAL_CLIPS_DIR,
    REPO_ROOT,
    busy_cores,
    machine_header,
    random_wav2vec2_base,
    real_clip_paths,
    speech_like_clip,
    summary_ms,
    timed,
)
from ser.audio.loader import load_audio
from ser.inference.backends import AUTO, BACKENDS, automatic_candidates
from ser.inference.hardware import detect_hardware
from ser.inference.predictor import EmotionClassifier

logger = logging.getLogger("benchmarks.serving")

PIPELINE = "pipeline"


@dataclass
class ServingBenchmarkArguments:
    model: str | None = field(
        default=None, metadata={"help": "Model folder or hub id. Default: a random-init wav2vec2-base (base shapes, 6 labels)."}
    )
    backends: str = field(
        default="",
        metadata={"help": f"Comma-separated backends ({AUTO}, {', '.join(BACKENDS)}). Default: {AUTO} plus this machine's candidates."},
    )
    pipeline: bool = field(default=True, metadata={"help": "Include the transformers pipeline fp32 baseline."})
    compare: str = field(
        default="",
        metadata={"help": "Other models timed in the same run, as MODEL:BACKEND pairs, comma-separated, e.g. 'models/ser-ravdess:auto,models/ser-ravdess-tdnn:auto' (latency, throughput and RSS; no agreement: they are other models)."},
    )
    durations_s: str = field(default="1,3,10", metadata={"help": "Clip lengths to time, comma-separated."})
    repeats: int = field(default=7, metadata={"help": "Timed calls per engine and clip length."})
    batch_clips: int = field(default=16, metadata={"help": "Clips in the throughput test (3 s each)."})
    synthetic_clips: int = field(default=40, metadata={"help": "Generated clips (1-6 s) for the agreement test."})
    real_clips_dir: str = field(
        default=str(DEFAULT_REAL_CLIPS_DIR), metadata={"help": "Real clips for the agreement test (skipped if missing)."}
    )
    real_clips: int = field(default=100, metadata={"help": "How many real clips (spread over the folder); 0 = none, -1 = all."})
    rss: bool = field(default=True, metadata={"help": "Measure peak RSS of each engine in a fresh process."})
    busy_cores: int = field(
        default=0,
        metadata={"help": "Cores kept busy by spinning processes while latency and throughput are timed (a small machine shared "
                  "with a web server, decoding or a neighbour). The automatic choice is made before, at load."},
    )
    output_json: str | None = field(default=None, metadata={"help": "Also write the results here as JSON."})
    probe_rss: str | None = field(default=None, metadata={"help": "(internal) run one engine and print its peak RSS."})


# -- engines ------------------------------------------------------------------------------------------
class PipelineEngine:
    """``transformers.pipeline("audio-classification")`` fed a 16 kHz numpy array: the thesis's serving path."""

    def __init__(self, model: str):
        from transformers import pipeline

        self.pipe = pipeline("audio-classification", model=model, feature_extractor=model, device="cpu")
        self.labels = [self.pipe.model.config.id2label[index] for index in range(self.pipe.model.config.num_labels)]

    def predict_proba(self, waveforms: list[np.ndarray]) -> np.ndarray:
        outputs = self.pipe([np.asarray(waveform) for waveform in waveforms], top_k=len(self.labels))
        rows = []
        for output in outputs:
            scores = {item["label"]: item["score"] for item in output}
            rows.append([scores[label] for label in self.labels])
        return np.asarray(rows)


def load_engine(model: str, name: str):
    if name == PIPELINE:
        return PipelineEngine(model)
    return EmotionClassifier.from_pretrained(model, backend=name)


def parse_compare(spec: str) -> dict[str, tuple[str, str]]:
    """``"models/a:auto,models/b:torch"`` -> ``{"a:auto": ("models/a", "auto"), ...}`` (engine name -> model, backend)."""
    engines = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        model, separator, backend = item.rpartition(":")
        if not separator or not model or backend not in (AUTO, *BACKENDS):
            raise SystemExit(f"--compare {item!r}: expected MODEL:BACKEND with BACKEND one of {AUTO}, {', '.join(BACKENDS)}")
        engines[f"{Path(model).name}:{backend}"] = (model, backend)
    return engines


def peak_rss_mb(model: str, name: str) -> float:
    """Peak RSS of a fresh process that loads ``name`` and classifies a few 3 s clips."""
    command = [sys.executable, "-m", "benchmarks.serving", "--model", model, "--probe_rss", name]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PEAK_RSS_MB=")]
    if result.returncode != 0 or not lines:
        logger.warning("RSS probe for %s failed: %s", name, result.stderr.strip().splitlines()[-1:] or result.returncode)
        return float("nan")
    return float(lines[-1].split("=", 1)[1])


def _probe_rss(model: str, name: str) -> None:
    engine = load_engine(model, name)
    for seed in range(3):
        engine.predict_proba([speech_like_clip(3.0, seed)])
    print(f"RSS_MB={current_rss_self_mb():.1f}")
    print(f"PEAK_RSS_MB={peak_rss_self_mb():.1f}")


def current_rss_self_mb() -> float:
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.is_file() else []:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_self_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
    across fork + exec, so a probe started by a big process would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- measurements -------------------------------------------------------------------------------------
def latency(engines: dict, durations_s: list[float], repeats: int) -> dict[str, dict[float, list[float]]]:
    clips = {duration: speech_like_clip(duration, seed=int(duration * 10)) for duration in durations_s}
    for engine in engines.values():  # warm-up: lazy init, allocator, ORT arena for each length
        for clip in clips.values():
            engine.predict_proba([clip])
    times: dict[str, dict[float, list[float]]] = {name: {d: [] for d in durations_s} for name in engines}
    for _ in range(repeats):
        for duration, clip in clips.items():
            for name, engine in engines.items():
                times[name][duration].append(timed(lambda: engine.predict_proba([clip])))
    return times


def throughput(engines: dict, batch_clips: int, rounds: int = 2) -> dict[str, float]:
    clips = [speech_like_clip(3.0, seed=100 + index) for index in range(batch_clips)]
    best: dict[str, float] = {name: 0.0 for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            best[name] = max(best[name], batch_clips / timed(lambda: engine.predict_proba(clips)))
    return best


def agreement(engines: dict, clips: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Top-1 agreement with ``torch`` and the largest |probability difference|, clip by clip."""
    if not clips or "torch" not in engines:
        return {}
    reference = np.concatenate([engines["torch"].predict_proba([clip]) for clip in clips])
    results = {}
    for name, engine in engines.items():
        if name == "torch":
            continue
        probabilities = np.concatenate([engine.predict_proba([clip]) for clip in clips])
        results[name] = {
            "clips": len(clips),
            "top1_agreement": float((probabilities.argmax(axis=1) == reference.argmax(axis=1)).mean()),
            "max_abs_prob_diff": float(np.abs(probabilities - reference).max()),
        }
    return results


def decode_cost(repeats: int) -> dict[str, float]:
    """Median ms for load_audio of a 3 s 48 kHz stereo wav and mp3 (decode + downmix + resample to 16 kHz)."""
    import soundfile

    costs = {}
    with tempfile.TemporaryDirectory() as scratch:
        stereo = np.stack([speech_like_clip(3.0, 1, 48_000), speech_like_clip(3.0, 2, 48_000)], axis=1)
        wav = Path(scratch) / "clip48k.wav"
        soundfile.write(str(wav), stereo, 48_000)
        mp3 = Path(scratch) / "clip48k.mp3"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-b:a", "128k", str(mp3)], check=False)
        for path in (wav, mp3):
            if not path.is_file():
                continue
            load_audio(path)
            costs[path.suffix.lstrip(".") + " 48k 3s"] = summary_ms([timed(lambda: load_audio(path)) for _ in range(repeats)])[0]
    return costs


# -- report -------------------------------------------------------------------------------------------
def print_report(report: dict) -> None:
    durations = report["durations_s"]
    names = list(report["latency_ms"])
    baseline = PIPELINE if PIPELINE in names else names[0]
    print()
    print(report["machine"])
    print(f"Model: {report['model']}" + (f"; also timed: {', '.join(report['compared'])}" if report.get("compared") else ""))
    if report["arguments"].get("busy_cores"):
        print(f"Timed with {report['arguments']['busy_cores']} core(s) kept busy by spinning processes (--busy_cores)")
    width = max(17, *(len(name) + 2 for name in names))
    header = f"{'engine':<{width}}" + "".join(f"{f'{d:g} s median [min-max] ms':>30}{'x':>6}" for d in durations)
    header += f"{'clips/s':>9}{'peak RSS MB':>13}"
    print(header)
    automatic = report.get("automatic_choice")
    for name in names:
        label = f"{AUTO}={automatic['backend']}" if name == AUTO and automatic else name
        row = f"{label:<{width}}"
        for duration in durations:
            median, low, high = report["latency_ms"][name][str(duration)]
            base = report["latency_ms"][baseline][str(duration)][0]
            row += f"{f'{median:.0f} [{low:.0f}-{high:.0f}]':>30}{base / median:>6.2f}"
        row += f"{report['throughput_clips_per_s'].get(name, float('nan')):>9.2f}"
        row += f"{report['peak_rss_mb'].get(name, float('nan')):>13.0f}"
        print(row)
    print(f"(x = speed-up over {baseline}; higher is better)")
    for source, results in report["agreement"].items():
        for name, values in results.items():
            print(
                f"agreement vs torch on {source} ({values['clips']} clips): {name:<10} top-1 "
                f"{100 * values['top1_agreement']:.1f}%  max |dp| {values['max_abs_prob_diff']:.4f}"
            )
    for name, cost in report["decode_ms"].items():
        print(f"load_audio {name}: {cost:.1f} ms")


def main() -> None:
    from transformers import HfArgumentParser

    from ser.inference.backends import num_threads

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    (args,) = HfArgumentParser(ServingBenchmarkArguments).parse_args_into_dataclasses()
    model = args.model or str(random_wav2vec2_base())
    if args.probe_rss:
        _probe_rss(model, args.probe_rss)
        return
    requested = [name.strip() for name in args.backends.split(",") if name.strip()]
    if not requested:
        candidates, excluded = automatic_candidates(detect_hardware())
        requested = [AUTO] + candidates
        for name, why in excluded.items():
            logger.info("Not timing %s: %s (ask for it with --backends)", name, why)
    names = ([PIPELINE] if args.pipeline else []) + requested
    durations_s = [float(value) for value in args.durations_s.split(",")]

    compared = parse_compare(args.compare)
    started = time.perf_counter()
    engines = {name: load_engine(model, name) for name in names}  # ONNX graphs are exported here, once
    engines |= {name: load_engine(other, backend) for name, (other, backend) in compared.items()}
    logger.info("Loaded %d engines in %.1f s", len(engines), time.perf_counter() - started)

    with busy_cores(args.busy_cores):
        logger.info("Timing latency (%s s clips, %d rounds, %d busy cores)", args.durations_s, args.repeats, args.busy_cores)
        latency_s = latency(engines, durations_s, args.repeats)
        logger.info("Timing batch throughput (%d clips)", args.batch_clips)
        clips_per_s = throughput(engines, args.batch_clips)

    automatic = engines[AUTO].backend_choice if AUTO in engines else None
    fast = {name: engine for name, engine in engines.items() if name != PIPELINE and name not in compared}
    sources = {"synthetic": [speech_like_clip(1.0 + 5.0 * ((index * 7) % 10) / 10, 1000 + index) for index in range(args.synthetic_clips)]}
    real_dir = Path(args.real_clips_dir)
    if args.real_clips != 0 and real_dir.is_dir():
        sample_rate = next(iter(fast.values())).sample_rate if fast else 16_000
        paths = real_clip_paths(real_dir, args.real_clips)
        sources[f"real ({real_dir.name})"] = [load_audio(path, sample_rate) for path in paths]
    logger.info("Measuring agreement with torch fp32")
    agreement_results = {source: agreement(fast, clips) for source, clips in sources.items()}

    rss = {}
    if args.rss:
        logger.info("Measuring peak RSS, one fresh process per engine")
        rss = {name: peak_rss_mb(model, name) for name in names}
        rss |= {name: peak_rss_mb(other, backend) for name, (other, backend) in compared.items()}

    report = {
        "model": model,
        "threads": num_threads(),
        "machine": machine_header(f"{automatic.name} ({automatic.reason})" if automatic else None),
        "hardware": detect_hardware().to_dict(),
        "automatic_choice": automatic.to_dict() if automatic else None,
        "compared": {name: list(pair) for name, pair in compared.items()},
        "durations_s": durations_s,
        "latency_ms": {name: {str(d): summary_ms(values) for d, values in per.items()} for name, per in latency_s.items()},
        "throughput_clips_per_s": clips_per_s,
        "peak_rss_mb": rss,
        "agreement": agreement_results,
        "decode_ms": decode_cost(args.repeats),
        "arguments": asdict(args),
    }
    print_report(report)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
