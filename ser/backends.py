"""Serving backends: how ``EmotionClassifier.forward`` turns features into logits.

``torch`` is the fp32 reference. The fast paths run the same model through ONNX Runtime (fp32, or
with int8 weights in the linear layers) or in bfloat16. The ONNX graph is exported once and cached
next to the model (``<model>/onnx/``), or under ``$SER_CACHE_DIR`` (default ``~/.cache/ser``) when
the model folder is read-only or the model is a hub id. Each cached graph carries a fingerprint of
the weights, the config and the exporter version, so a retrained model is re-exported, never served
from a stale graph.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

BACKEND_ENV_VAR = "SER_BACKEND"
CACHE_ENV_VAR = "SER_CACHE_DIR"
THREADS_ENV_VAR = "SER_NUM_THREADS"

#: name -> what it is (shown in ``--help`` and the README).
BACKENDS: dict[str, str] = {
    "torch": "PyTorch fp32, the reference",
    "onnx": "ONNX Runtime fp32 (same numbers as torch, less overhead)",
    "onnx-int8": "ONNX Runtime, int8 weights in the linear (MatMul) layers, dynamic activation quantization",
    "bf16": "PyTorch with bfloat16 weights and activations",
}
#: The fastest backend that agrees with ``torch`` on >= 99.5 % of top-1 answers (benchmarks/serving.py).
#: ``onnx-int8`` is ~1.7x faster still but agreed on only 97.3 % of 150 real clips with a random-init
#: wav2vec2-base (near-ties; max |dp| 0.002): re-measure on the trained model before making it the default.
DEFAULT_BACKEND = "onnx"

#: Bump when the export or quantization recipe changes: cached graphs from older recipes are rebuilt.
EXPORTER_VERSION = "1"
ONNX_OPSET = 17


class BackendError(RuntimeError):
    """A backend could not be built (export or session creation failed)."""


class UnknownBackendError(BackendError, ValueError):
    """The backend name is not one of :data:`BACKENDS`."""


#: Where a lossy backend is clearly faster (>= 1.25x fp32 ONNX at 3 s) and still agrees on >= 99.5 % of
#: top-1 answers (``python -m benchmarks.serving`` on an idle 2-core machine): wav2vec2-base in bf16 is
#: 2.0x the fp32 pipeline with 100 % agreement on 140 clips. The bundled EmotionCnn stays exact fp32
#: ONNX: bf16 flips 1.7 % of real clips, int8 0.6 % (and saves only ~2 ms of ~12 ms).
DEFAULT_BACKEND_BY_MODEL_TYPE: dict[str, str] = {"wav2vec2": "bf16"}


def resolve_backend(name: str | None = None, model_type: str | None = None) -> str:
    """Explicit name, else ``$SER_BACKEND``, else the default for ``model_type``, else :data:`DEFAULT_BACKEND`."""
    default = DEFAULT_BACKEND_BY_MODEL_TYPE.get(model_type or "", DEFAULT_BACKEND)
    chosen = (name or os.environ.get(BACKEND_ENV_VAR) or default).strip().lower()
    if chosen not in BACKENDS:
        raise UnknownBackendError(f"Unknown backend {chosen!r}; choose one of: {', '.join(BACKENDS)}.")
    return chosen


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
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().data if data.numel() else b"")
    return digest.hexdigest()


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
    root = Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "ser")
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


def quantize_int8(source: Path, destination: Path) -> None:
    """Dynamic int8 quantization of the MatMuls that multiply by a weight.

    Only MatMul: ConvInteger is slower than the fp32 Conv in ONNX Runtime. Only weight MatMuls:
    activation x activation products (attention scores, EmotionCnn's mel filterbank over a power
    spectrum with a huge dynamic range) lose too much with per-tensor int8.
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
        )
    finally:
        cleaned.unlink(missing_ok=True)


def ensure_onnx(
    model: torch.nn.Module,
    model_name_or_path: str,
    sample_rate: int,
    uses_attention_mask: bool,
    quantized: bool,
) -> tuple[Path, bool]:
    """Path of an up-to-date cached graph (exported now if missing or stale) and whether it was exported."""
    variant = f"int8-matmul;mask={uses_attention_mask}" if quantized else f"fp32;mask={uses_attention_mask}"
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
                quantize_int8(fp32_path, final)
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
    #: The fp32 torch module is only kept where the backend runs it (saves its memory otherwise).
    keeps_torch_model: bool
    graph_path: Path | None = None
    exported: bool = False


def build_backend(
    name: str,
    model: torch.nn.Module,
    model_name_or_path: str,
    sample_rate: int,
    uses_attention_mask: bool,
    release_torch_weights: bool = False,
) -> BuiltBackend:
    """The runner for backend ``name`` (already resolved) over ``model`` in eval mode.

    ``release_torch_weights``: for the ONNX backends, free the torch weights (moved to the meta
    device) once the graph is exported, before ONNX Runtime loads its copy, to keep peak memory down.
    Only for a model nobody else uses.
    """
    if name == "torch":
        torch.set_num_threads(num_threads())
        return BuiltBackend(name, TorchRunner(model), keeps_torch_model=True)
    if name == "bf16":
        torch.set_num_threads(num_threads())
        # ``.to`` converts in place: copy a model the caller may still use in fp32.
        bf16_model = (model if release_torch_weights else copy.deepcopy(model)).to(torch.bfloat16)
        return BuiltBackend(name, TorchRunner(bf16_model, torch.bfloat16), keeps_torch_model=True)
    if name in ("onnx", "onnx-int8"):
        graph_path, exported = ensure_onnx(
            model, model_name_or_path, sample_rate, uses_attention_mask, quantized=name == "onnx-int8"
        )
        min_samples = int(getattr(model.config, "n_fft", 0) or 0)
        if release_torch_weights:
            model.to(torch.device("meta"))
        runner = OnnxRunner(graph_path, min_samples=min_samples)
        return BuiltBackend(name, runner, keeps_torch_model=False, graph_path=graph_path, exported=exported)
    raise UnknownBackendError(f"Unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}.")
