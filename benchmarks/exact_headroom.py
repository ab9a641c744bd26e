"""How much faster than PyTorch fp32 can wav2vec2-base get on this CPU without changing its answers?

    python -m benchmarks.exact_headroom                       # this CPU
    benchmarks/cpu_mask/run python -m benchmarks.exact_headroom   # as on an AVX2-only CPU

Prints, after the machine header:
1. PyTorch's fp32 matrix-product rate (GMAC/s) for wav2vec2-base's shapes and a large square one,
   and the rate its feature encoder (convolutions) and transformer layers reach in the model: when
   those are the same, an exact backend has nothing left to win.
2. Exact alternatives timed interleaved on a 3 s clip, with the ratio to ``torch`` and the largest
   logit difference: the project's ONNX graph, the same graph with ONNX Runtime's transformer
   fusions (``onnxruntime.transformers.optimizer``), and TorchScript frozen with
   ``torch.jit.optimize_for_inference``.
3. int8 with an fp32 fallback on near-ties: on real clips, the top-1 agreement of ``onnx-int8``,
   the gap between ``torch``'s top two classes, and for each margin threshold how many clips
   would be re-run in fp32 and the resulting mean time against ``torch``.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import DEFAULT_REAL_CLIPS_DIR, machine_header, random_wav2vec2_base, real_clip_paths, speech_like_clip, timed
from ser.audio.loader import load_audio
from ser.inference.backends import OnnxRunner, num_threads
from ser.inference.predictor import EmotionClassifier

logger = logging.getLogger("benchmarks.exact_headroom")


@dataclass
class HeadroomArguments:
    repeats: int = field(default=8, metadata={"help": "Timed calls per engine (interleaved) and per matrix product."})
    real_clips: int = field(default=100, metadata={"help": "Real clips for the int8 fallback estimate (0: skip it)."})
    real_clips_dir: str = field(default=str(DEFAULT_REAL_CLIPS_DIR), metadata={"help": "Where the real clips are."})
    margins: str = field(default="0.005,0.01,0.02", metadata={"help": "int8 top-two margins below which fp32 re-runs."})


def _median_s(function, repeats: int) -> float:
    function()
    return statistics.median(timed(function) for _ in range(repeats))


def matmul_rates(repeats: int) -> dict[str, float]:
    rates = {}
    for rows, inner, columns in ((149, 768, 3072), (149, 3072, 768), (149, 768, 768), (2048, 2048, 2048)):
        left, right = torch.randn(rows, inner), torch.randn(inner, columns)
        seconds = _median_s(lambda: left @ right, repeats)
        rates[f"{rows}x{inner} @ {inner}x{columns}"] = rows * inner * columns / seconds / 1e9
    return rates


@torch.inference_mode()
def model_part_rates(model, clip: torch.Tensor, repeats: int) -> dict[str, tuple[float, float]]:
    """{part: (ms, GMAC/s)} for the feature encoder and the transformer layers of a 3 s forward."""
    config = model.config
    wav2vec2 = model.wav2vec2
    features = wav2vec2.feature_extractor(clip)
    conv_macs, length, channels = 0, clip.shape[-1], 1
    for out_channels, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        length = (length - kernel) // stride + 1
        conv_macs += length * channels * out_channels * kernel
        channels = out_channels
    hidden, _ = wav2vec2.feature_projection(features.transpose(1, 2))
    frames, size = hidden.shape[1], config.hidden_size
    # Projections and feed-forward only (attention scores are a few per cent at 149 frames).
    encoder_macs = config.num_hidden_layers * frames * (4 * size * size + 2 * size * config.intermediate_size)
    conv_s = _median_s(lambda: wav2vec2.feature_extractor(clip), repeats)
    encoder_s = _median_s(lambda: wav2vec2.encoder(hidden), repeats)
    return {
        "feature encoder (convolutions)": (1000 * conv_s, conv_macs / conv_s / 1e9),
        "transformer layers (projections + feed-forward)": (1000 * encoder_s, encoder_macs / encoder_s / 1e9),
    }


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.model(input_values).logits


def exact_alternatives(
    reference: EmotionClassifier, model_dir: Path, clip: np.ndarray, repeats: int, scratch: Path
) -> dict[str, tuple[float, float]]:
    """{engine: (median ms, max |logit - torch logit|)} on one clip, timed interleaved against ``reference`` (torch)."""
    from onnxruntime.transformers import optimizer

    onnx = EmotionClassifier.from_pretrained(model_dir, backend="onnx")
    inputs = reference.preprocess([clip])
    fused_path = scratch / "model.fused.onnx"
    config = reference.model.config
    fused = optimizer.optimize_model(
        str(onnx.backend_info.graph_path), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size, opt_level=0
    )
    logger.info("ONNX Runtime fusions: %s", {name: count for name, count in fused.get_fused_operator_statistics().items() if count})
    fused.save_model_to_file(str(fused_path))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints
        traced = torch.jit.trace(_Logits(reference.model).eval(), (inputs["input_values"],), strict=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    runners = {
        "torch": reference._runner,
        "onnx (project graph)": onnx._runner,
        "onnx + transformer fusions": OnnxRunner(fused_path),
        "TorchScript frozen + optimize_for_inference": lambda features: frozen(features["input_values"]).numpy(),
    }
    with torch.inference_mode():
        expected = runners["torch"](inputs)
        differences = {name: float(np.abs(np.asarray(runner(inputs)) - expected).max()) for name, runner in runners.items()}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(repeats):
            for name, runner in runners.items():
                times[name].append(timed(lambda: runner(inputs)))
    return {name: (1000 * statistics.median(times[name]), differences[name]) for name in runners}


def int8_fallback(reference: EmotionClassifier, model_dir: Path, paths: list[Path], margins: list[float]) -> dict:
    int8 = EmotionClassifier.from_pretrained(model_dir, backend="onnx-int8")
    exact, quantized, exact_s, quantized_s = [], [], [], []
    for path in paths:
        waveform = load_audio(path, reference.sample_rate)
        started = time.perf_counter()
        exact.append(reference.predict_proba([waveform])[0])
        exact_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        quantized.append(int8.predict_proba([waveform])[0])
        quantized_s.append(time.perf_counter() - started)
    exact_p, quantized_p = np.array(exact), np.array(quantized)
    exact_gap = np.diff(np.sort(exact_p, axis=1)[:, -2:], axis=1)[:, 0]
    quantized_gap = np.diff(np.sort(quantized_p, axis=1)[:, -2:], axis=1)[:, 0]
    torch_ms, int8_ms = 1000 * statistics.median(exact_s), 1000 * statistics.median(quantized_s)
    fallbacks = {}
    for margin in margins:
        rerun = quantized_gap < margin
        # top-1 of the cascade: int8's where it is sure, fp32's where it re-ran
        cascade = np.where(rerun, exact_p.argmax(axis=1), quantized_p.argmax(axis=1))
        mean_ms = int8_ms + float(rerun.mean()) * torch_ms
        fallbacks[margin] = (float(rerun.mean()), float((cascade == exact_p.argmax(axis=1)).mean()), mean_ms, torch_ms / mean_ms)
    return {
        "clips": len(paths),
        "torch_ms": torch_ms,
        "int8_ms": int8_ms,
        "int8_top1": float((quantized_p.argmax(axis=1) == exact_p.argmax(axis=1)).mean()),
        "median_torch_gap": float(np.median(exact_gap)),
        "fallbacks": fallbacks,
    }


def main() -> None:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(HeadroomArguments).parse_args_into_dataclasses()
    torch.set_num_threads(num_threads())
    model_dir = random_wav2vec2_base()
    clip = speech_like_clip(3.0, seed=0)
    reference = EmotionClassifier.from_pretrained(model_dir, backend="torch")
    rates = matmul_rates(args.repeats)
    parts = model_part_rates(reference.model, torch.from_numpy(clip)[None], args.repeats)
    with tempfile.TemporaryDirectory() as scratch:
        alternatives = exact_alternatives(reference, model_dir, clip, args.repeats, Path(scratch))
    real_dir = Path(args.real_clips_dir)
    paths = real_clip_paths(real_dir, args.real_clips) if args.real_clips and real_dir.is_dir() else []
    fallback = int8_fallback(reference, model_dir, paths, [float(value) for value in args.margins.split(",")]) if paths else None

    print()
    print(machine_header())
    print(f"Model: random-init wav2vec2-base ({model_dir}), one 3 s clip")
    print("PyTorch fp32 matrix products:")
    for shape, rate in rates.items():
        print(f"  {shape:<24} {rate:6.1f} GMAC/s")
    print("Inside the model (torch fp32, 3 s clip):")
    for part, (ms, rate) in parts.items():
        print(f"  {part:<48} {ms:6.0f} ms  {rate:6.1f} GMAC/s")
    print("Exact alternatives, interleaved (median ms, x torch, max |logit difference|):")
    torch_ms = alternatives["torch"][0]
    for name, (ms, difference) in alternatives.items():
        print(f"  {name:<44} {ms:6.0f} ms  {torch_ms / ms:5.2f}x  {difference:.1e}")
    if fallback is None:
        print("int8 fallback: no real clips (../shared/data/ravdess), skipped")
        return
    print(
        f"int8 with an fp32 fallback on near-ties, {fallback['clips']} real clips: torch {fallback['torch_ms']:.0f} ms, "
        f"onnx-int8 {fallback['int8_ms']:.0f} ms per clip (median), onnx-int8 top-1 agreement {100 * fallback['int8_top1']:.1f} %, "
        f"median gap between torch's top two classes {fallback['median_torch_gap']:.4f}"
    )
    for margin, (rate, agreement, mean_ms, speedup) in fallback["fallbacks"].items():
        print(
            f"  re-run in fp32 when int8's top-two gap < {margin:g}: {100 * rate:.0f} % of clips, top-1 agreement "
            f"{100 * agreement:.1f} %, mean {mean_ms:.0f} ms = {speedup:.2f}x torch"
        )


if __name__ == "__main__":
    main()
