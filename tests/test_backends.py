"""Serving backends: the fast paths answer like the torch fp32 reference; the ONNX cache is reused
and rebuilt when the weights change."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import synth_clip

from ser.inference import backends, onnx_export
from ser.inference.backends import UnknownBackendError, requested_backend
from ser.inference.hardware import detect_hardware, hardware_from
from ser.inference.onnx_export import cache_dir_for
from ser.inference.predictor import EmotionClassifier

# Lengths around the edges: shorter than the CNN's STFT window (400 samples), odd, 3 s.
LENGTHS = (300, 1_600, 12_345, 16_000, 48_000)


def _clips() -> list[np.ndarray]:
    return [synth_clip(index % 6, seed=index, duration_s=length / 16_000) for index, length in enumerate(LENGTHS)]


@pytest.fixture
def model_copy(request, tmp_path):
    """A private copy of a tiny model folder, so caches and edited weights stay in this test."""
    source = request.getfixturevalue(request.param)
    return shutil.copytree(source, tmp_path / "model", ignore=shutil.ignore_patterns("onnx"))


def _long_clips() -> list[np.ndarray]:
    # Alone, a 300-sample clip is too short for either model's conv stack; the CNN scores it in a
    # padded batch (and ONNX must pad it the same way).
    return [clip for clip in _clips() if len(clip) >= 1_600]


@pytest.mark.parametrize("model_copy", ["tiny_wav2vec2_dir", "tiny_cnn_dir", "tiny_tdnn_dir", "tiny_pitch_tdnn_dir", "tiny_whisper_ser_dir"], indirect=True)
def test_fast_backends_agree_with_torch(model_copy):
    is_cnn = json.loads((model_copy / "config.json").read_text())["model_type"] == "emotion_cnn"
    clips = _clips() if is_cnn else _long_clips()
    reference = EmotionClassifier.from_pretrained(model_copy, backend="torch")
    expected = reference.predict_proba(clips)
    # Every backend runs on every CPU (int8 with 7-bit weights where there is no VNNI; bf16 emulated,
    # slowly, where there is no hardware bf16); cuda only where there is a GPU.
    tolerances = {"onnx": 1e-4, "onnx-int8": 2e-2, "bf16": 2e-2}
    if detect_hardware().has_cuda:
        tolerances["cuda"] = 2e-2
    for name, tolerance in tolerances.items():
        fast = EmotionClassifier.from_pretrained(model_copy, backend=name)
        assert fast.backend == name
        assert fast.labels == reference.labels and fast.sample_rate == reference.sample_rate
        probabilities = fast.predict_proba(clips)
        assert probabilities.shape == expected.shape
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
        assert np.abs(probabilities - expected).max() < tolerance, name
    # fp32 ONNX is the same computation, clip by clip too (batch size 1 vs padded batches).
    onnx = EmotionClassifier.from_pretrained(model_copy, backend="onnx")
    one_by_one = np.concatenate([onnx.predict_proba([clip]) for clip in _long_clips()])
    expected_one_by_one = np.concatenate([reference.predict_proba([clip]) for clip in _long_clips()])
    assert (one_by_one.argmax(axis=1) == expected_one_by_one.argmax(axis=1)).all()
    np.testing.assert_allclose(one_by_one, expected_one_by_one, atol=1e-4)


@pytest.mark.parametrize("model_copy", ["tiny_cnn_dir"], indirect=True)
def test_onnx_cache_is_reused(model_copy):
    first = EmotionClassifier.from_pretrained(model_copy, backend="onnx-int8")
    graph = first.backend_info.graph_path
    assert first.backend_info.exported
    assert graph == model_copy / "onnx" / "model.int8.onnx" and graph.is_file()
    metadata = json.loads(graph.with_suffix(".json").read_text())
    assert metadata["exporter_version"] == onnx_export.EXPORTER_VERSION
    modified = graph.stat().st_mtime_ns

    second = EmotionClassifier.from_pretrained(model_copy, backend="onnx-int8")
    assert not second.backend_info.exported
    assert second.backend_info.graph_path == graph
    assert graph.stat().st_mtime_ns == modified
    # The ONNX classifier keeps no torch weights around.
    assert second.model is None and second.config.num_labels == len(second.labels)
    clip = [synth_clip(1, seed=3)]
    np.testing.assert_allclose(first.predict_proba(clip), second.predict_proba(clip), atol=1e-7)


@pytest.mark.parametrize("model_copy", ["tiny_wav2vec2_dir"], indirect=True)
def test_stale_cache_is_rebuilt_when_weights_change(model_copy):
    from transformers import AutoModelForAudioClassification

    clip = [synth_clip(2, seed=5)]
    before = EmotionClassifier.from_pretrained(model_copy, backend="onnx")
    old_fingerprint = json.loads(before.backend_info.graph_path.with_suffix(".json").read_text())["fingerprint"]
    old = before.predict_proba(clip)

    # "Retrain": change the classifier head and save over the same folder.
    model = AutoModelForAudioClassification.from_pretrained(model_copy)
    with torch.no_grad():
        model.classifier.weight.add_(torch.linspace(-1.0, 1.0, model.classifier.weight.numel()).view_as(model.classifier.weight))
    model.save_pretrained(model_copy)

    after = EmotionClassifier.from_pretrained(model_copy, backend="onnx")
    assert after.backend_info.exported
    new_fingerprint = json.loads(after.backend_info.graph_path.with_suffix(".json").read_text())["fingerprint"]
    assert new_fingerprint != old_fingerprint
    reference = EmotionClassifier.from_pretrained(model_copy, backend="torch").predict_proba(clip)
    np.testing.assert_allclose(after.predict_proba(clip), reference, atol=1e-4)
    assert np.abs(reference - old).max() > 1e-3  # the change mattered, so a stale graph would have failed


def test_exporter_version_change_invalidates(tiny_cnn_dir, tmp_path, monkeypatch):
    model_dir = shutil.copytree(tiny_cnn_dir, tmp_path / "model", ignore=shutil.ignore_patterns("onnx"))
    assert EmotionClassifier.from_pretrained(model_dir, backend="onnx").backend_info.exported
    assert not EmotionClassifier.from_pretrained(model_dir, backend="onnx").backend_info.exported
    monkeypatch.setattr(onnx_export, "EXPORTER_VERSION", onnx_export.EXPORTER_VERSION + "-next")
    assert EmotionClassifier.from_pretrained(model_dir, backend="onnx").backend_info.exported


def test_cache_location_for_hub_ids_and_read_only_folders(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_export.CACHE_ENV_VAR, str(tmp_path / "cache"))
    assert cache_dir_for("superb/wav2vec2-base-superb-er") == tmp_path / "cache" / "onnx" / "superb--wav2vec2-base-superb-er"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    assert cache_dir_for(str(model_dir)) == model_dir / "onnx"
    monkeypatch.setattr(onnx_export, "_is_writable_dir", lambda directory: False)
    read_only = cache_dir_for(str(model_dir))
    assert read_only.parent == tmp_path / "cache" / "onnx" and read_only.name.endswith("model")


def test_requested_backend(monkeypatch):
    monkeypatch.delenv(backends.BACKEND_ENV_VAR, raising=False)
    assert requested_backend() is None  # nothing asked for: the automatic choice
    assert requested_backend("auto") is None and requested_backend(" AUTO ") is None
    monkeypatch.setenv(backends.BACKEND_ENV_VAR, "bf16")
    assert requested_backend() == "bf16"
    assert requested_backend("Torch") == "torch"  # explicit beats the environment
    monkeypatch.setenv(backends.BACKEND_ENV_VAR, "auto")
    assert requested_backend() is None
    assert {"torch", "onnx", "onnx-int8", "bf16", "cuda"} <= set(backends.BACKENDS)
    with pytest.raises(UnknownBackendError, match="onnx-int8"):
        requested_backend("tensorrt")


def test_env_var_selects_backend(tiny_cnn_dir, monkeypatch):
    monkeypatch.setenv(backends.BACKEND_ENV_VAR, "torch")
    classifier = EmotionClassifier.from_pretrained(tiny_cnn_dir)
    assert classifier.backend == "torch" and classifier.model is not None


def test_int8_quantizes_only_weight_matmuls(tiny_wav2vec2_dir, tmp_path):
    import onnx
    from transformers import AutoModelForAudioClassification

    from ser.inference.onnx_export import export_onnx, quantize_int8

    model = AutoModelForAudioClassification.from_pretrained(tiny_wav2vec2_dir).eval()
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    export_onnx(model, fp32, 16_000, uses_attention_mask=False)
    quantize_int8(fp32, int8)
    ops = [node.op_type for node in onnx.load(str(int8)).graph.node]
    # Linear layers become integer matmuls; attention (activation x activation) stays fp32; no ConvInteger.
    assert ops.count("MatMulInteger") > 0 and ops.count("MatMul") > 0
    assert "ConvInteger" not in ops


NO_VNNI_AVX2 = hardware_from({"avx2": True, "fma3": True}, "AVX2", "AVX2-only test CPU")


@pytest.mark.parametrize("model_copy", ["tiny_wav2vec2_dir", "tiny_tdnn_dir"], indirect=True)
def test_int8_without_vnni_uses_7_bit_weights_and_agrees(model_copy, monkeypatch):
    """Where ONNX Runtime's u8s8 products can saturate (AVX2, no VNNI) the int8 graph is quantized
    with reduce_range. This CPU does have VNNI, so the check is that the 7-bit recipe is the one
    built there and that it stays within the int8 tolerance."""
    reference = EmotionClassifier.from_pretrained(model_copy, backend="torch")
    monkeypatch.setattr(backends, "detect_hardware", lambda: NO_VNNI_AVX2)
    reduced = EmotionClassifier.from_pretrained(model_copy, backend="onnx-int8")
    metadata = json.loads(reduced.backend_info.graph_path.with_suffix(".json").read_text())
    assert "reduce_range" in metadata["variant"]
    clips = _long_clips()
    assert np.abs(reduced.predict_proba(clips) - reference.predict_proba(clips)).max() < 2e-2
    # A VNNI machine gets the full-range recipe: the fingerprint differs, so the graph is rebuilt.
    vnni = hardware_from({"avx2": True, "avx512_f": True, "avx512_vnni": True}, "AVX512", "VNNI test CPU")
    monkeypatch.setattr(backends, "detect_hardware", lambda: vnni)
    full = EmotionClassifier.from_pretrained(model_copy, backend="onnx-int8")
    assert full.backend_info.exported
    assert "reduce_range" not in json.loads(full.backend_info.graph_path.with_suffix(".json").read_text())["variant"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_backend_agrees_with_torch(tiny_tdnn_dir):
    reference = EmotionClassifier.from_pretrained(tiny_tdnn_dir, backend="torch")
    on_gpu = EmotionClassifier.from_pretrained(tiny_tdnn_dir, backend="cuda")
    assert next(on_gpu.model.parameters()).is_cuda
    clips = _long_clips()
    assert np.abs(on_gpu.predict_proba(clips) - reference.predict_proba(clips)).max() < 2e-2
    automatic = EmotionClassifier.from_pretrained(tiny_tdnn_dir)
    assert automatic.backend == "cuda" and automatic.backend_choice.automatic
