"""The ONNX graphs the ``onnx`` and ``onnx-int8`` backends run: exported once, int8-quantized where
asked, cached next to the model or under ``$SER_CACHE_DIR``, each carrying a fingerprint of the
weights, the config and the recipe so a retrained model is never served from a stale graph."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ser.inference.backend_names import BackendError

logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "SER_CACHE_DIR"
#: Bump when the export or quantization recipe changes: cached graphs from older recipes are rebuilt.
EXPORTER_VERSION = "1"
ONNX_OPSET = 17


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


