"""Serving backends: how ``EmotionClassifier.forward`` turns features into logits, and which one runs.

``torch`` is the fp32 reference. The fast paths run the same model through ONNX Runtime (fp32, or
with int8 weights in the linear layers), in bfloat16, or on a CUDA GPU. The ONNX graph is exported
once and cached next to the model (``<model>/onnx/``), or under ``$SER_CACHE_DIR`` (default
``~/.cache/ser``) when the model folder is read-only or the model is a hub id. Each cached graph
carries a fingerprint of the weights, the config, the exporter version and the int8 recipe, so a
retrained model is re-exported, never served from a stale graph.

With no ``--backend`` and no ``$SER_BACKEND`` the backend is chosen for the machine at hand
(:func:`automatic_candidates`, :func:`pick_fastest`): ``cuda`` when a GPU is present; on a CPU the
candidates (``torch``, ``onnx``, and the lossy ones an operator allows in ``$SER_AUTO_LOSSY`` where
the hardware supports them) are timed on the warm-up clip and the fastest that agrees with fp32
``torch`` is kept. The choice is generic: it does not depend on the architecture.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .hardware import Hardware, detect_hardware

logger = logging.getLogger(__name__)

BACKEND_ENV_VAR = "SER_BACKEND"
CACHE_ENV_VAR = "SER_CACHE_DIR"
THREADS_ENV_VAR = "SER_NUM_THREADS"
#: ``--backend auto`` (or ``SER_BACKEND=auto``) asks for the automatic choice explicitly.
AUTO = "auto"

#: name -> what it is (shown in ``--help`` and the README).
BACKENDS: dict[str, str] = {
    "torch": "PyTorch fp32, the reference",
    "onnx": "ONNX Runtime fp32 (same numbers as torch, less overhead)",
    "onnx-int8": "ONNX Runtime, int8 weights in the linear (MatMul) layers, dynamic activation quantization "
    "(7-bit weights on CPUs without VNNI, where 8-bit products can saturate)",
    "bf16": "PyTorch with bfloat16 weights and activations (CPUs with hardware bf16; emulated and slow elsewhere)",
    "cuda": "PyTorch on the GPU with bf16 autocast (fp16 where the GPU has no bf16)",
}
#: Same numbers as ``torch`` up to float rounding; the others are lossy.
EXACT_BACKENDS = ("torch", "onnx")

#: Load-time check of a candidate on the warm-up clip: an exact backend further than this from
#: ``torch`` is broken; a lossy one must stay within it and keep the same top-1 class.
EXACT_MAX_PROB_DIFF = 1e-3
LOSSY_MAX_PROB_DIFF = 5e-3
#: A lossy backend is only worth its rounding when it is clearly faster than the best exact one.
LOSSY_MIN_SPEEDUP = 1.2
#: Timed calls per candidate on the warm-up clip (after one untimed call), interleaved.
SELECTION_REPEATS = 3

#: Bump when the export or quantization recipe changes: cached graphs from older recipes are rebuilt.
EXPORTER_VERSION = "1"
ONNX_OPSET = 17


class BackendError(RuntimeError):
    """A backend could not be built (export or session creation failed)."""


class UnknownBackendError(BackendError, ValueError):
    """The backend name is not one of :data:`BACKENDS`."""


class BackendUnavailableError(BackendError):
    """The backend was asked for explicitly but this machine cannot run it (``cuda`` without a GPU)."""


def requested_backend(name: str | None = None) -> str | None:
    """Explicit name, else ``$SER_BACKEND``; ``None`` (or ``auto``) means: choose for this machine."""
    chosen = (name or os.environ.get(BACKEND_ENV_VAR) or "").strip().lower()
    if not chosen or chosen == AUTO:
        return None
    if chosen not in BACKENDS:
        raise UnknownBackendError(f"Unknown backend {chosen!r}; choose one of: {AUTO}, {', '.join(BACKENDS)}.")
    return chosen


def check_available(name: str, hardware: Hardware) -> None:
    """Refuse, with the reason, an explicitly requested backend this machine cannot run; warn where
    it runs but slowly."""
    if name == "cuda" and not hardware.has_cuda:
        raise BackendUnavailableError(
            "The cuda backend needs an NVIDIA GPU and a CUDA build of PyTorch; torch.cuda.is_available() is False here. "
            "Use --backend auto (or leave SER_BACKEND unset) to pick the fastest CPU backend."
        )
    if name == "bf16" and not hardware.cpu_bf16:
        logger.warning(
            "bf16 was requested but this CPU (%s) has no hardware bf16 at the level PyTorch uses: PyTorch emulates it, "
            "typically many times slower than fp32 torch. The answers are still within bf16 rounding.",
            hardware.describe(),
        )


@dataclass(frozen=True)
class BackendChoice:
    """Which backend serves, why, and what was measured to decide (shown in the log and ``/health``)."""

    name: str
    reason: str
    automatic: bool
    hardware: str
    #: Median ms per warm-up clip of each timed candidate (empty when nothing was timed).
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: Candidates left out, and why.
    excluded: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "backend": self.name,
            "reason": self.reason,
            "automatic": self.automatic,
            "hardware": self.hardware,
            "timings_ms": {name: round(value, 1) for name, value in self.timings_ms.items()},
            "excluded": dict(self.excluded),
        }


#: ``SER_AUTO_LOSSY=bf16,onnx-int8``: lossy backends the automatic choice may also time, for an
#: operator who has checked their model's real-clip agreement (``python -m benchmarks.serving --model M``).
AUTO_LOSSY_ENV_VAR = "SER_AUTO_LOSSY"
LOSSY_BACKENDS = ("bf16", "onnx-int8")
#: Why the lossy backends are left out by default: one warm-up clip cannot show a real-clip top-1
#: agreement of 99.5 %, and on random-weight wav2vec2-base (near-ties) neither reaches it
#: (benchmarks/serving.py, 100 RAVDESS clips: bf16 99.0 %, onnx-int8 99.0 %; README: Fast serving).
LOSSY_OPT_IN_REASON = (
    f"lossy: timed only when allowed in ${AUTO_LOSSY_ENV_VAR} (its real-clip top-1 agreement depends on the model: "
    "99.0 % on random-weight wav2vec2-base, below the 99.5 % rule)"
)


def allowed_lossy(setting: str | None = None) -> frozenset[str]:
    """The lossy backends named in ``setting`` (default ``$SER_AUTO_LOSSY``); unknown names are refused."""
    raw = os.environ.get(AUTO_LOSSY_ENV_VAR, "") if setting is None else setting
    names = frozenset(name.strip().lower() for name in raw.split(",") if name.strip())
    unknown = names - set(LOSSY_BACKENDS)
    if unknown:
        raise UnknownBackendError(f"${AUTO_LOSSY_ENV_VAR} names {', '.join(sorted(unknown))}; it takes: {', '.join(LOSSY_BACKENDS)}.")
    return names


def automatic_candidates(hardware: Hardware, lossy: frozenset[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(backends worth timing on this machine, {left-out backend: why}).

    ``cuda`` alone when a GPU is present (not raced against the CPU: on ZeroGPU the device is only
    attached inside a request, and a GPU outruns two CPU cores by far; its agreement with ``torch``
    is what ``tests/test_backends.py`` checks where a GPU is). On a
    CPU: ``torch`` and ``onnx``, plus the ``lossy`` ones allowed (default ``$SER_AUTO_LOSSY``), with
    ``bf16`` only on hardware bf16 even then: emulated bf16 is an order of magnitude slower than fp32,
    and timing it would cost seconds at every start.
    """
    if hardware.has_cuda:
        return ["cuda"], {name: "a CUDA GPU is present" for name in BACKENDS if name != "cuda"}
    lossy = allowed_lossy() if lossy is None else lossy
    excluded = {"cuda": "no CUDA GPU"}
    candidates = ["torch", "onnx"]
    for name in LOSSY_BACKENDS:
        if name not in lossy:
            excluded[name] = LOSSY_OPT_IN_REASON
        elif name == "bf16" and not hardware.cpu_bf16:
            excluded[name] = f"no hardware bf16 at PyTorch's kernel level ({hardware.cpu_capability}): it would be emulated"
        else:
            candidates.append(name)
    return candidates, excluded


@dataclass(frozen=True)
class CandidateResult:
    """One candidate timed on the warm-up clip, against the fp32 ``torch`` answer on the same clip."""

    median_ms: float
    max_prob_diff: float
    same_top1: bool


def pick_fastest(results: Mapping[str, CandidateResult], excluded: Mapping[str, str] | None = None) -> tuple[str, str, dict[str, str]]:
    """(chosen backend, reason, {rejected candidate: why}) from the timed candidates.

    The rule: among the candidates that agree with ``torch`` (exact ones within
    :data:`EXACT_MAX_PROB_DIFF`; lossy ones with the same top-1 and within :data:`LOSSY_MAX_PROB_DIFF`),
    the fastest exact one, unless a lossy one is at least :data:`LOSSY_MIN_SPEEDUP` times faster
    still. ``torch`` is always a candidate, so the choice is never slower than it as measured.
    """
    if "torch" not in results:
        raise ValueError("The torch fp32 reference must be among the timed candidates.")
    rejected = dict(excluded or {})
    agreeing: dict[str, CandidateResult] = {}
    for name, result in results.items():
        exact = name in EXACT_BACKENDS
        limit = EXACT_MAX_PROB_DIFF if exact else LOSSY_MAX_PROB_DIFF
        if name != "torch" and (result.max_prob_diff > limit or not (exact or result.same_top1)):
            rejected[name] = f"disagrees with torch on the warm-up clip (max |dp| {result.max_prob_diff:.4f} > {limit:g}" + (
                ")" if result.same_top1 else ", top-1 differs)"
            )
            continue
        agreeing[name] = result
    best_exact = min((name for name in agreeing if name in EXACT_BACKENDS), key=lambda name: agreeing[name].median_ms)
    torch_ms = agreeing["torch"].median_ms
    lossy = [name for name in agreeing if name not in EXACT_BACKENDS]
    best_lossy = min(lossy, key=lambda name: agreeing[name].median_ms) if lossy else None
    exact_ms = agreeing[best_exact].median_ms
    if best_lossy is not None and agreeing[best_lossy].median_ms * LOSSY_MIN_SPEEDUP <= exact_ms:
        lossy_ms = agreeing[best_lossy].median_ms
        reason = (
            f"fastest on the warm-up clip: {lossy_ms:.0f} ms vs {exact_ms:.0f} ms for {best_exact} and {torch_ms:.0f} ms for torch "
            f"({torch_ms / lossy_ms:.2f}x torch), max |dp| {agreeing[best_lossy].max_prob_diff:.4f} vs torch"
        )
        return best_lossy, reason, rejected
    if best_lossy is not None:
        rejected[best_lossy] = (
            f"{agreeing[best_lossy].median_ms:.0f} ms vs {exact_ms:.0f} ms for the exact {best_exact}: "
            f"not {LOSSY_MIN_SPEEDUP:g}x faster, not worth its rounding"
        )
    if best_exact == "torch":
        reason = f"fastest on the warm-up clip ({torch_ms:.0f} ms)"
    else:
        reason = f"fastest exact backend on the warm-up clip: {exact_ms:.0f} ms vs {torch_ms:.0f} ms for torch ({torch_ms / exact_ms:.2f}x)"
    return best_exact, reason, rejected


def time_candidates(
    runners: Mapping[str, Callable[[Mapping[str, torch.Tensor]], np.ndarray]],
    inputs: Mapping[str, torch.Tensor],
    repeats: int = SELECTION_REPEATS,
    to_probabilities: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, CandidateResult]:
    """Each runner once untimed (lazy init), then ``repeats`` timed calls, interleaved so load from
    other processes hits all alike; answers compared with ``runners["torch"]`` as class probabilities
    (``to_probabilities`` of a runner's output; default: its softmax, for runners that give logits)."""
    to_probabilities = to_probabilities or (lambda output: _softmax(np.asarray(output, dtype=np.float64)))
    probabilities = {name: np.asarray(to_probabilities(runner(inputs)), dtype=np.float64) for name, runner in runners.items()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            started = time.perf_counter()
            runner(inputs)
            times[name].append(time.perf_counter() - started)
    reference = probabilities["torch"]
    return {
        name: CandidateResult(
            median_ms=1000.0 * statistics.median(times[name]),
            max_prob_diff=float(np.abs(probabilities[name] - reference).max()),
            same_top1=bool((probabilities[name].argmax(axis=-1) == reference.argmax(axis=-1)).all()),
        )
        for name in runners
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def num_threads() -> int:
    """Physical cores available to this process (``$SER_NUM_THREADS`` overrides).

    Hyper-threads share the matmul units, so more threads than physical cores only adds contention.
    """
    if os.environ.get(THREADS_ENV_VAR):
        return max(1, int(os.environ[THREADS_ENV_VAR]))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or usable
    except ImportError:
        physical = usable
    return max(1, min(usable, physical))


# -- fingerprints and the cache --------------------------------------------------------------------
def model_fingerprint(model: torch.nn.Module, variant: str) -> str:
    """sha256 over the weights (names, shapes, bytes), the config, the exporter recipe and ``variant``."""
    digest = hashlib.sha256()
    digest.update(f"exporter={EXPORTER_VERSION};opset={ONNX_OPSET};variant={variant};torch={torch.__version__}".encode())
    config = getattr(model, "config", None)
    if config is not None:
        config_dict = config.to_dict()
        config_dict.pop("transformers_version", None)
        digest.update(json.dumps(config_dict, sort_keys=True, default=str).encode())
    update_with_tensors(digest, model.state_dict())
    return digest.hexdigest()


def update_with_tensors(digest, state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    """Feed each tensor's name, dtype, shape and bytes to ``digest`` (a hashlib object)."""
    for name, tensor in state_dict.items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{prefix}{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().data if data.numel() else b"")


def cache_root() -> Path:
    """``$SER_CACHE_DIR``, else ``~/.cache/ser``: where derived files (ONNX graphs, embeddings) are kept."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "ser")


def _is_writable_dir(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
        return True
    except OSError:
        return False


def cache_dir_for(model_name_or_path: str) -> Path:
    """``<model folder>/onnx`` if that folder is writable, else ``$SER_CACHE_DIR/onnx/<name>``."""
    local = Path(model_name_or_path)
    if local.is_dir():
        beside = local / "onnx"
        if _is_writable_dir(beside):
            return beside
        name = str(local.resolve())
    else:
        name = model_name_or_path
    root = cache_root()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", name.strip("/")) or "model"
    return root / "onnx" / safe


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    # Write then rename, so a concurrent reader (another shard, the app) never sees half a file.
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(data)
    os.chmod(handle.name, 0o644)  # NamedTemporaryFile is private; the cache may be shared by users
    os.replace(handle.name, path)


# -- export ---------------------------------------------------------------------------------------
def _example_inputs(sample_rate: int, uses_attention_mask: bool) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    if not uses_attention_mask:
        return (0.05 * torch.randn(1, 2 * sample_rate, generator=generator),)
    # Two clips, one padded: the traced graph must always apply the mask (an all-ones mask lets
    # transformers skip masking, and tracing would bake that shortcut in).
    values = 0.05 * torch.randn(2, 2 * sample_rate, generator=generator)
    mask = torch.ones(2, 2 * sample_rate, dtype=torch.int64)
    mask[1, 3 * sample_rate // 2 :] = 0
    values[1, 3 * sample_rate // 2 :] = 0.0
    return values, mask


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in, logits out: the shape ``torch.onnx.export`` wants."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            return self.model(input_values=input_values).logits
        return self.model(input_values=input_values, attention_mask=attention_mask).logits


def export_onnx(model: torch.nn.Module, path: Path, sample_rate: int, uses_attention_mask: bool) -> None:
    """fp32 ONNX graph with dynamic batch and time axes."""
    import warnings

    inputs = _example_inputs(sample_rate, uses_attention_mask)
    input_names = ["input_values", "attention_mask"][: len(inputs)]
    dynamic_axes = {name: {0: "batch", 1: "samples"} for name in input_names}
    dynamic_axes["logits"] = {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # Tracer warnings about Python ints are expected for the fixed config values.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LogitsOnly(model).eval(),
            inputs,
            str(path),
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes=dynamic_axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles wav2vec2 and EmotionCnn
        )


def quantize_int8(source: Path, destination: Path, reduce_range: bool = False) -> None:
    """Dynamic int8 quantization of the MatMuls that multiply by a weight.

    Only MatMul: ConvInteger is slower than the fp32 Conv in ONNX Runtime. Only weight MatMuls:
    activation x activation products (attention scores, EmotionCnn's mel filterbank over a power
    spectrum with a huge dynamic range) lose too much with per-tensor int8.

    ``reduce_range``: 7-bit weights, for CPUs without VNNI. There ONNX Runtime multiplies uint8
    activations by int8 weights with AVX2's ``vpmaddubsw``, which adds pairs of products into int16
    and saturates (255 x 127 x 2 > 32767); with weights in [-64, 63] the pair sum cannot overflow.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph_model = onnx.load(str(source))
    initializers = {initializer.name for initializer in graph_model.graph.initializer}
    constants = {output for node in graph_model.graph.node if node.op_type == "Constant" for output in node.output}
    weights = initializers | constants
    excluded = [
        node.name
        for node in graph_model.graph.node
        if node.op_type == "MatMul" and (len(node.input) < 2 or node.input[1] not in weights)
    ]
    # Stale shape annotations from the exporter can make the quantizer mis-type tensors.
    del graph_model.graph.value_info[:]
    cleaned = source.with_name(source.stem + ".clean.onnx")
    onnx.save(graph_model, str(cleaned))
    try:
        quantize_dynamic(
            str(cleaned),
            str(destination),
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=excluded,
            weight_type=QuantType.QInt8,
            per_channel=False,
            reduce_range=reduce_range,
        )
    finally:
        cleaned.unlink(missing_ok=True)


def ensure_onnx(
    model: torch.nn.Module,
    model_name_or_path: str,
    sample_rate: int,
    uses_attention_mask: bool,
    quantized: bool,
    reduce_range: bool = False,
) -> tuple[Path, bool]:
    """Path of an up-to-date cached graph (exported now if missing or stale) and whether it was exported.

    ``reduce_range`` (int8 only): 7-bit weights (see :func:`quantize_int8`); part of the fingerprint.
    """
    if quantized:
        variant = f"int8-matmul{';reduce_range' if reduce_range else ''};mask={uses_attention_mask}"
    else:
        variant = f"fp32;mask={uses_attention_mask}"
    fingerprint = model_fingerprint(model, variant)
    directory = cache_dir_for(model_name_or_path)
    directory.mkdir(parents=True, exist_ok=True)
    graph_path = directory / ("model.int8.onnx" if quantized else "model.onnx")
    meta_path = graph_path.with_suffix(".json")
    if graph_path.is_file() and meta_path.is_file():
        try:
            stored = json.loads(meta_path.read_text()).get("fingerprint")
        except (OSError, json.JSONDecodeError):
            stored = None
        if stored == fingerprint:
            logger.info("Using cached ONNX graph %s", graph_path)
            return graph_path, False
        logger.info("Cached ONNX graph %s is stale (weights, config or exporter changed): re-exporting", graph_path)
    else:
        logger.info("Exporting %s to ONNX (%s), once", model_name_or_path, variant)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as scratch:
        fp32_path = Path(scratch) / "model.onnx"
        try:
            export_onnx(model, fp32_path, sample_rate, uses_attention_mask)
            final = fp32_path
            if quantized:
                final = Path(scratch) / "model.int8.onnx"
                quantize_int8(fp32_path, final, reduce_range=reduce_range)
        except Exception as error:  # the exporter raises many unrelated types
            raise BackendError(f"Could not export {model_name_or_path} to ONNX: {error}") from error
        os.replace(final, graph_path)
    metadata = {
        "fingerprint": fingerprint,
        "variant": variant,
        "exporter_version": EXPORTER_VERSION,
        "opset": ONNX_OPSET,
        "torch": torch.__version__,
        "source": model_name_or_path,
    }
    _atomic_write_bytes(meta_path, json.dumps(metadata, indent=2).encode())
    return graph_path, True


# -- runners ---------------------------------------------------------------------------------------
Runner = Callable[[Mapping[str, torch.Tensor]], np.ndarray]


@dataclass
class TorchRunner:
    model: torch.nn.Module
    dtype: torch.dtype = torch.float32

    @torch.inference_mode()
    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
        cast = {key: value.to(self.dtype) if value.is_floating_point() else value for key, value in inputs.items()}
        return self.model(**cast).logits.float().numpy()


@dataclass
class CudaRunner:
    """fp32 weights on the GPU, matmuls and convolutions under ``autocast_dtype`` autocast (norms and
    softmax stay fp32, which is what autocast is for)."""

    model: torch.nn.Module
    autocast_dtype: torch.dtype = torch.bfloat16
    device: str = "cuda"

    @torch.inference_mode()
    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
        on_device = {key: value.to(self.device, non_blocking=True) for key, value in inputs.items()}
        with torch.autocast(device_type="cuda", dtype=self.autocast_dtype):
            logits = self.model(**on_device).logits
        return logits.float().cpu().numpy()


def on_zero_gpu(runner: Runner, hardware: Hardware) -> Runner:
    """On a ZeroGPU Space, ``runner`` wrapped in ``spaces.GPU`` (which attaches a GPU for each call);
    unchanged anywhere else. ``spaces`` is imported only here, and only when it is installed."""
    if not hardware.zero_gpu:
        return runner
    import spaces

    @spaces.GPU
    def run_on_gpu(inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
        return runner(inputs)

    return run_on_gpu


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OnnxRunner:
    """One ONNX Runtime session; ``min_samples`` pads shorter batches (with a zero mask) the way the
    torch model pads them internally, since a traced pad amount is a constant in the graph."""

    def __init__(self, graph_path: Path, threads: int | None = None, min_samples: int = 0):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads would otherwise spin for a while after each request, taking the CPU from
        # whatever runs next (decoding, the web server, another process on a 2-core Space).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped exceptions
            raise BackendError(f"ONNX Runtime could not load {graph_path}: {error}") from error
        self.graph_path = graph_path
        self.min_samples = min_samples
        self._inputs = {node.name: _ORT_DTYPES.get(node.type, np.float32) for node in self.session.get_inputs()}

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
        feed = {name: np.ascontiguousarray(inputs[name].numpy(), dtype=dtype) for name, dtype in self._inputs.items()}
        shortfall = self.min_samples - feed["input_values"].shape[-1]
        if shortfall > 0 and "attention_mask" in feed:
            feed = {name: np.pad(array, ((0, 0), (0, shortfall))) for name, array in feed.items()}
        return self.session.run(["logits"], feed)[0]


@dataclass
class BuiltBackend:
    name: str
    runner: Runner
    #: The torch module the runner runs (fp32, a bf16 copy, on the GPU); ``None`` for ONNX, which
    #: keeps no torch weights (saves their memory).
    module: torch.nn.Module | None
    graph_path: Path | None = None
    exported: bool = False


def build_backend(
    name: str,
    model: torch.nn.Module,
    model_name_or_path: str,
    sample_rate: int,
    uses_attention_mask: bool,
    release_torch_weights: bool = False,
    hardware: Hardware | None = None,
) -> BuiltBackend:
    """The runner for backend ``name`` (a concrete one, not ``auto``) over ``model`` in eval mode.

    ``release_torch_weights``: for the ONNX backends, free the torch weights (moved to the meta
    device) once the graph is exported, before ONNX Runtime loads its copy, to keep peak memory down;
    for ``bf16`` and ``cuda``, convert or move ``model`` itself instead of a copy. Only for a model
    nobody else uses. ``hardware``: this machine unless given (tests pass a made-up one).
    """
    hardware = hardware or detect_hardware()
    check_available(name, hardware)
    if name == "torch":
        torch.set_num_threads(num_threads())
        return BuiltBackend(name, TorchRunner(model), module=model)
    if name == "bf16":
        torch.set_num_threads(num_threads())
        # ``.to`` converts in place: copy a model the caller may still use in fp32.
        bf16_model = (model if release_torch_weights else copy.deepcopy(model)).to(torch.bfloat16)
        return BuiltBackend(name, TorchRunner(bf16_model, torch.bfloat16), module=bf16_model)
    if name == "cuda":
        cuda_model = (model if release_torch_weights else copy.deepcopy(model)).to("cuda")
        autocast_dtype = torch.bfloat16 if hardware.cuda_bf16 else torch.float16
        return BuiltBackend(name, on_zero_gpu(CudaRunner(cuda_model, autocast_dtype), hardware), module=cuda_model)
    if name in ("onnx", "onnx-int8"):
        quantized = name == "onnx-int8"
        graph_path, exported = ensure_onnx(
            model, model_name_or_path, sample_rate, uses_attention_mask, quantized=quantized,
            reduce_range=quantized and not hardware.cpu_vnni,
        )
        min_samples = int(getattr(model.config, "n_fft", 0) or 0)
        if release_torch_weights:
            model.to(torch.device("meta"))
        runner = OnnxRunner(graph_path, min_samples=min_samples)
        return BuiltBackend(name, runner, module=None, graph_path=graph_path, exported=exported)
    raise UnknownBackendError(f"Unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}.")


def release_unused(model: torch.nn.Module, built: BuiltBackend) -> None:
    """Free the fp32 torch weights (moved to the meta device) when the chosen backend does not run them."""
    if built.module is not model:
        model.to(torch.device("meta"))


def choose_and_build(
    model: torch.nn.Module,
    model_name_or_path: str,
    sample_rate: int,
    uses_attention_mask: bool,
    warmup_inputs: Callable[[], Mapping[str, torch.Tensor]],
    requested: str | None = None,
    release_torch_weights: bool = False,
    hardware: Hardware | None = None,
    to_probabilities: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[BuiltBackend, BackendChoice]:
    """The backend that serves, and why: ``requested`` (explicit or ``$SER_BACKEND``) when given,
    else the automatic choice for this machine.

    ``warmup_inputs()``: model inputs for the warm-up clip, used to time and check the candidates.
    ``to_probabilities``: the runner's output -> class probabilities, for a model whose backend
    output is not logits (an utterance embedding, classified by a head outside the backend).
    Losers are dropped before returning; with ``release_torch_weights`` the fp32 weights too, when
    the winner does not run them.
    """
    hardware = hardware or detect_hardware()
    described = hardware.describe()
    if requested is not None:
        built = build_backend(requested, model, model_name_or_path, sample_rate, uses_attention_mask, release_torch_weights, hardware)
        choice = BackendChoice(requested, f"requested explicitly (--backend or ${BACKEND_ENV_VAR})", False, described)
        return built, choice
    candidates, excluded = automatic_candidates(hardware)
    if candidates == ["cuda"]:
        built = build_backend("cuda", model, model_name_or_path, sample_rate, uses_attention_mask, release_torch_weights, hardware)
        reason = f"a CUDA GPU is present ({hardware.cuda_device}, {'bf16' if hardware.cuda_bf16 else 'fp16'} autocast)"
        return built, BackendChoice("cuda", reason, True, described, excluded=excluded)
    built_candidates: dict[str, BuiltBackend] = {}
    for name in candidates:
        try:
            # The fp32 model is shared by all candidates while they are timed: nothing is released yet.
            built_candidates[name] = build_backend(name, model, model_name_or_path, sample_rate, uses_attention_mask, False, hardware)
        except BackendError as error:
            if name == "torch":
                raise
            logger.warning("Backend %s left out of the automatic choice: %s", name, error)
            excluded[name] = f"could not be built: {error}"
    inputs = warmup_inputs()
    results = time_candidates({name: built.runner for name, built in built_candidates.items()}, inputs, to_probabilities=to_probabilities)
    name, reason, rejected = pick_fastest(results, excluded)
    chosen = built_candidates[name]
    built_candidates.clear()  # drop the losers' sessions and copies
    if release_torch_weights:
        release_unused(model, chosen)
    choice = BackendChoice(name, reason, True, described, {key: value.median_ms for key, value in results.items()}, rejected)
    return chosen, choice
