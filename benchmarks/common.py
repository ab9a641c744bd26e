"""Helpers shared by the benchmark scripts: the default model, test clips, timing."""

from __future__ import annotations

import contextlib
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
from ser.audio.loader import TARGET_SAMPLE_RATE
from ser.core.labels import DEFAULT_LABELS, label_maps

logger = logging.getLogger(__name__)

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_REAL_CLIPS_DIR = SHARED_DATA / "ravdess" / "Emotions"


def random_wav2vec2_base(directory: Path | None = None, seed: int = 0) -> Path:
    """A randomly initialised wav2vec2-base (``Wav2Vec2Config()`` = base shapes) with the six labels.

    Same compute as a trained wav2vec2-base, no download. Saved once per directory and reused.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    from ser.models.presets import feature_extractor_for

    directory = directory or Path(tempfile.gettempdir()) / f"ser-bench-wav2vec2-base-random-{seed}"
    if (directory / "config.json").is_file():
        return directory
    import torch

    torch.manual_seed(seed)
    config = Wav2Vec2Config()
    config.id2label, config.label2id = label_maps(DEFAULT_LABELS)
    model = Wav2Vec2ForSequenceClassification(config)
    model.save_pretrained(directory)
    feature_extractor_for(config).save_pretrained(directory)
    logger.info("Saved a random-init wav2vec2-base to %s", directory)
    return directory


def speech_like_clip(duration_s: float, seed: int, sample_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """A voiced tone with a moving pitch plus noise: not speech, but not silence or white noise."""
    rng = np.random.default_rng(seed)
    time_s = np.arange(int(duration_s * sample_rate)) / sample_rate
    pitch_hz = 100.0 + 150.0 * rng.random() + 30.0 * np.sin(2 * np.pi * (0.5 + rng.random()) * time_s)
    phase = 2 * np.pi * np.cumsum(pitch_hz) / sample_rate
    tone = sum(np.sin(harmonic * phase) / harmonic for harmonic in range(1, 6))
    return (0.2 * tone + 0.02 * rng.standard_normal(time_s.size)).astype(np.float32)


def real_clip_paths(directory: Path, limit: int) -> list[Path]:
    """Up to ``limit`` audio files spread evenly over the sorted listing (deterministic)."""
    paths = sorted(path for path in directory.rglob("*") if path.suffix.lower() in {".wav", ".flac", ".mp3", ".ogg"})
    if limit <= 0 or len(paths) <= limit:
        return paths
    step = len(paths) / limit
    return [paths[int(index * step)] for index in range(limit)]


@contextlib.contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """Keep ``count`` cores busy (one spinning process each) inside the block: what a web server,
    a decoder or a neighbouring process does to a small machine while the model runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(0, count))]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def summary_ms(seconds: list[float]) -> tuple[float, float, float]:
    """(median, min, max) in milliseconds."""
    values = [1000.0 * value for value in seconds]
    return statistics.median(values), min(values), max(values)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]


def machine_header(automatic: str | None = None) -> str:
    """The lines every benchmark prints first: which CPU (and GPU) produced the numbers, the kernel
    level PyTorch runs at, the emulation settings in force, and the automatic backend choice."""
    import os

    from ser.inference.backends import num_threads
    from ser.inference.hardware import ONEDNN_ISA_ENV_VAR, detect_hardware

    hardware = detect_hardware()
    emulation = [f"{name}={os.environ[name]}" for name in ("ATEN_CPU_CAPABILITY", ONEDNN_ISA_ENV_VAR) if os.environ.get(name)]
    if hardware.cpuid_mask:
        emulation.insert(0, f"CPUID masked to {hardware.cpuid_mask} (benchmarks/cpu_mask/run: every library sees that CPU)")
    lines = [
        f"CPU: {hardware.cpu_model}   PyTorch kernel level: {hardware.cpu_capability}   "
        f"bf16 {'yes' if hardware.cpu_bf16 else 'no'}, VNNI {'yes' if hardware.cpu_vnni else 'no'}, "
        f"AMX {'yes' if hardware.cpu_amx else 'no'}   threads: {num_threads()}",
        f"GPU: {hardware.cuda_device or 'none'}   emulation: {', '.join(emulation) if emulation else 'none (the CPU as it is)'}",
    ]
    if automatic:
        lines.append(f"automatic choice: {automatic}")
    return "\n".join(lines)
