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
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ser.inference.backend_choice import (
    automatic_candidates,
    pick_fastest,
    time_candidates,
)
from ser.inference.backend_names import AUTO, BACKEND_ENV_VAR, BACKENDS, THREADS_ENV_VAR, BackendError, BackendUnavailableError, UnknownBackendError
from ser.inference.hardware import Hardware, detect_hardware
from ser.inference.onnx_export import ensure_onnx

logger = logging.getLogger(__name__)


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
    before_each: Callable[[], object] | None = None,
) -> tuple[BuiltBackend, BackendChoice]:
    """The backend that serves, and why: ``requested`` (explicit or ``$SER_BACKEND``) when given,
    else the automatic choice for this machine.

    ``warmup_inputs()``: model inputs for the warm-up clip, used to time and check the candidates.
    ``to_probabilities``: the runner's output -> class probabilities, for a model whose backend
    output is not logits (an utterance embedding, classified by a head outside the backend).
    ``before_each``: the application's work before each model call, run before every timed call
    (:func:`ser.inference.backend_choice.time_candidates`).
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
    results = time_candidates(
        {name: built.runner for name, built in built_candidates.items()}, inputs, to_probabilities=to_probabilities, before_each=before_each
    )
    name, reason, rejected = pick_fastest(results, excluded)
    chosen = built_candidates[name]
    built_candidates.clear()  # drop the losers' sessions and copies
    if release_torch_weights:
        release_unused(model, chosen)
    choice = BackendChoice(name, reason, True, described, {key: value.median_ms for key, value in results.items()}, rejected)
    return chosen, choice
