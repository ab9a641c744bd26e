"""The automatic backend choice: what the hardware allows (capabilities mocked as real CPUs report
them), the timing rule, the explicit override, the GPU and ZeroGPU paths, and /health."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from conftest import synth_clip

from ser.inference import backend_choice, backends
from ser.inference.backend_choice import LOSSY_MIN_SPEEDUP, CandidateResult, automatic_candidates, pick_fastest
from ser.inference.backends import (
    BackendUnavailableError,
    on_zero_gpu,
)
from ser.inference.hardware import hardware_from
from ser.inference.predictor import EmotionClassifier
from ser.serving.monitoring import Readiness

# cpuinfo flag sets of real CPUs (torch.cpu.get_capabilities() names), with the kernel level PyTorch picks.
AVX2_ONLY = {"avx": True, "avx2": True, "fma3": True}  # e.g. AMD EPYC Zen 2/3, Intel Haswell..Comet Lake
AVX512_PLAIN = {**AVX2_ONLY, "avx512_f": True, "avx512_bw": True, "avx512_vl": True}  # Skylake-SP
AVX512_VNNI = {**AVX512_PLAIN, "avx512_vnni": True}  # Cascade Lake
AVX512_BF16 = {**AVX512_VNNI, "avx512_bf16": True}  # AMD Zen 4, Cooper Lake
SAPPHIRE_RAPIDS = {**AVX512_BF16, "avx_vnni": True, "amx_tile": True, "amx_bf16": True, "amx_int8": True}

AVX2_MACHINE = hardware_from(AVX2_ONLY, "AVX2", "AMD EPYC (test)")
BF16_MACHINE = hardware_from(AVX512_BF16, "AVX512", "AMD EPYC Zen 4 (test)")


@pytest.mark.parametrize(
    ("flags", "capability", "onednn_isa", "bf16", "vnni", "amx"),
    [
        (AVX2_ONLY, "AVX2", None, False, False, False),
        (AVX512_PLAIN, "AVX512", None, False, False, False),
        (AVX512_VNNI, "AVX512", None, False, True, False),
        (AVX512_BF16, "AVX512", None, True, True, False),
        (SAPPHIRE_RAPIDS, "AVX512", None, True, True, True),
        # The benchmarks' emulation of an AVX2-only machine on a big one:
        (SAPPHIRE_RAPIDS, "AVX2", None, False, True, True),  # ATEN_CPU_CAPABILITY=avx2: PyTorch would emulate bf16
        (SAPPHIRE_RAPIDS, "AVX512", "AVX2", False, False, False),  # ONEDNN_MAX_CPU_ISA=AVX2
        (SAPPHIRE_RAPIDS, "AVX512", "avx512_core_vnni", False, True, False),
        (SAPPHIRE_RAPIDS, "AVX512", "ALL", True, True, True),
    ],
)
def test_capabilities_read_from_flags_and_settings(flags, capability, onednn_isa, bf16, vnni, amx):
    hardware = hardware_from(flags, capability, "test CPU", onednn_isa)
    assert (hardware.cpu_bf16, hardware.cpu_vnni, hardware.cpu_amx) == (bf16, vnni, amx)
    assert not hardware.has_cuda
    assert hardware.cpu_capability in hardware.describe()


def test_candidates_follow_the_hardware(monkeypatch):
    monkeypatch.delenv(backend_choice.AUTO_LOSSY_ENV_VAR, raising=False)
    # By default only the exact backends: one warm-up clip cannot show a 99.5 % real-clip agreement.
    for machine in (AVX2_MACHINE, BF16_MACHINE):
        candidates, excluded = automatic_candidates(machine)
        assert candidates == ["torch", "onnx"]
        assert "99.5" in excluded["bf16"] and "99.5" in excluded["onnx-int8"] and "cuda" in excluded
    # Lossy backends an operator allows: bf16 still only with hardware bf16.
    everything = frozenset({"bf16", "onnx-int8"})
    candidates, excluded = automatic_candidates(AVX2_MACHINE, everything)
    assert candidates == ["torch", "onnx", "onnx-int8"] and "emulated" in excluded["bf16"]
    monkeypatch.setenv(backend_choice.AUTO_LOSSY_ENV_VAR, "bf16, onnx-int8")
    candidates, excluded = automatic_candidates(BF16_MACHINE)
    assert candidates == ["torch", "onnx", "bf16", "onnx-int8"] and set(excluded) == {"cuda"}
    monkeypatch.setenv(backend_choice.AUTO_LOSSY_ENV_VAR, "fp8")
    with pytest.raises(backends.UnknownBackendError, match="SER_AUTO_LOSSY"):
        automatic_candidates(BF16_MACHINE)
    gpu = hardware_from(AVX2_ONLY, "AVX2", "test CPU", cuda_device="NVIDIA test GPU", cuda_bf16=True)
    candidates, excluded = automatic_candidates(gpu)
    assert candidates == ["cuda"] and set(excluded) == set(backends.BACKENDS) - {"cuda"}


def result(median_ms: float, max_prob_diff: float = 0.0, same_top1: bool = True) -> CandidateResult:
    return CandidateResult(median_ms, max_prob_diff, same_top1)


def test_pick_fastest_prefers_exact_unless_lossy_is_clearly_faster():
    # The AVX2 report: emulated bf16 far slower than fp32. Not a candidate there, but if timed it loses.
    chosen, reason, _ = pick_fastest({"torch": result(523), "onnx": result(450, 1e-6), "bf16": result(12_200, 0.001)})
    assert chosen == "onnx" and "523" in reason
    # int8 clearly faster and agreeing: chosen.
    chosen, reason, _ = pick_fastest({"torch": result(260), "onnx": result(230, 1e-6), "onnx-int8": result(140, 0.002)})
    assert chosen == "onnx-int8" and "1.86x torch" in reason
    # int8 faster, but by less than LOSSY_MIN_SPEEDUP over the best exact backend: not worth its rounding.
    close = 230 / LOSSY_MIN_SPEEDUP + 5
    chosen, _, rejected = pick_fastest({"torch": result(260), "onnx": result(230, 1e-6), "onnx-int8": result(close, 0.002)})
    assert chosen == "onnx" and "not worth" in rejected["onnx-int8"]
    # ONNX slower than torch (a small model, overhead-bound): torch itself.
    chosen, reason, _ = pick_fastest({"torch": result(12), "onnx": result(13, 1e-6)})
    assert chosen == "torch" and "12 ms" in reason


def test_pick_fastest_never_keeps_a_backend_that_disagrees():
    results = {
        "torch": result(260),
        "onnx": result(200, 0.05),  # an "exact" backend that is not: a broken export
        "onnx-int8": result(100, 0.004, same_top1=False),  # saturated int8 flips the answer
        "bf16": result(110, 0.02),  # within top-1 but past the lossy tolerance
    }
    chosen, _, rejected = pick_fastest(results, {"cuda": "no CUDA GPU"})
    assert chosen == "torch"
    assert set(rejected) == {"onnx", "onnx-int8", "bf16", "cuda"}
    assert "top-1 differs" in rejected["onnx-int8"]
    with pytest.raises(ValueError, match="torch"):
        pick_fastest({"onnx": result(1)})


def _record_time_candidates(monkeypatch) -> list[dict]:
    """Each call of ``backends.time_candidates`` (its runners and ``to_probabilities``), still timed for real."""
    calls: list[dict] = []
    real_time_candidates = backends.time_candidates

    def recording(runners, inputs, repeats=backend_choice.SELECTION_REPEATS, to_probabilities=None, before_each=None):
        calls.append({"runners": dict(runners), "to_probabilities": to_probabilities, "before_each": before_each})
        return real_time_candidates(runners, inputs, repeats, to_probabilities, before_each)

    monkeypatch.setattr(backends, "time_candidates", recording)
    return calls


def test_automatic_choice_on_an_avx2_machine(tiny_tdnn_dir, monkeypatch):
    """No flag, no $SER_BACKEND, an AVX2-only CPU where the operator allows every lossy backend:
    emulated bf16 is still never timed, the others are, and the fastest agreeing one serves, int8
    with 7-bit weights."""
    monkeypatch.delenv(backends.BACKEND_ENV_VAR, raising=False)
    monkeypatch.setenv(backend_choice.AUTO_LOSSY_ENV_VAR, "bf16,onnx-int8")
    monkeypatch.setattr(backends, "detect_hardware", lambda: AVX2_MACHINE)
    calls = _record_time_candidates(monkeypatch)
    classifier = EmotionClassifier.from_pretrained(tiny_tdnn_dir)
    choice = classifier.backend_choice
    timed = list(calls[0]["runners"])
    assert timed == ["torch", "onnx", "onnx-int8"]
    assert choice.automatic and choice.name == classifier.backend and classifier.backend in timed
    assert set(choice.timings_ms) == set(timed) and "bf16" in choice.excluded
    assert "AMD EPYC (test)" in choice.hardware and choice.reason
    # Whatever won, it answers like torch.
    clips = [synth_clip(index, seed=index, duration_s=1.5) for index in range(3)]
    reference = EmotionClassifier.from_pretrained(tiny_tdnn_dir, backend="torch").predict_proba(clips)
    assert np.abs(classifier.predict_proba(clips) - reference).max() < 2e-2
    assert (classifier.model is None) == (classifier.backend in ("onnx", "onnx-int8"))
    if classifier.backend == "onnx-int8":
        assert "reduce_range" in json.loads(classifier.backend_info.graph_path.with_suffix(".json").read_text())["variant"]


def test_default_automatic_choice_is_exact(tiny_cnn_dir, monkeypatch):
    monkeypatch.delenv(backends.BACKEND_ENV_VAR, raising=False)
    monkeypatch.delenv(backend_choice.AUTO_LOSSY_ENV_VAR, raising=False)
    monkeypatch.setattr(backends, "detect_hardware", lambda: BF16_MACHINE)
    classifier = EmotionClassifier.from_pretrained(tiny_cnn_dir)
    assert classifier.backend in ("torch", "onnx") and set(classifier.backend_choice.timings_ms) == {"torch", "onnx"}
    clips = [synth_clip(index, seed=index) for index in range(3)]
    reference = EmotionClassifier.from_pretrained(tiny_cnn_dir, backend="torch").predict_proba(clips)
    np.testing.assert_allclose(classifier.predict_proba(clips), reference, atol=1e-4)


def test_automatic_choice_keeps_a_clearly_faster_lossy_backend(tiny_cnn_dir, monkeypatch):
    monkeypatch.delenv(backends.BACKEND_ENV_VAR, raising=False)
    monkeypatch.setenv(backend_choice.AUTO_LOSSY_ENV_VAR, "bf16")
    monkeypatch.setattr(backends, "detect_hardware", lambda: BF16_MACHINE)
    measured = {"torch": result(100), "onnx": result(90, 1e-6), "bf16": result(40, 0.001)}
    monkeypatch.setattr(backends, "time_candidates", lambda runners, inputs, repeats=3, to_probabilities=None, before_each=None: {name: measured[name] for name in runners})
    classifier = EmotionClassifier.from_pretrained(tiny_cnn_dir)
    assert classifier.backend == "bf16" and classifier.backend_choice.automatic
    assert "2.50x torch" in classifier.backend_choice.reason
    assert next(classifier.model.parameters()).dtype == torch.bfloat16


def test_explicit_backend_skips_the_timing(tiny_cnn_dir, monkeypatch):
    monkeypatch.setenv(backends.BACKEND_ENV_VAR, "onnx")

    def fail(*args, **kwargs):
        raise AssertionError("an explicit backend must not be timed against the others")

    monkeypatch.setattr(backends, "time_candidates", fail)
    classifier = EmotionClassifier.from_pretrained(tiny_cnn_dir)
    assert classifier.backend == "onnx" and not classifier.backend_choice.automatic
    assert "explicitly" in classifier.backend_choice.reason
    assert EmotionClassifier.from_pretrained(tiny_cnn_dir, backend="torch").backend == "torch"  # the flag beats the variable


def test_cuda_refused_without_a_gpu(tiny_cnn_dir, monkeypatch):
    monkeypatch.setattr(backends, "detect_hardware", lambda: AVX2_MACHINE)
    with pytest.raises(BackendUnavailableError, match="torch.cuda.is_available"):
        EmotionClassifier.from_pretrained(tiny_cnn_dir, backend="cuda")


def test_explicit_bf16_without_hardware_bf16_warns(tiny_cnn_dir, monkeypatch, caplog):
    monkeypatch.setattr(backends, "detect_hardware", lambda: AVX2_MACHINE)
    with caplog.at_level("WARNING", logger="ser.inference.backends"):
        classifier = EmotionClassifier.from_pretrained(tiny_cnn_dir, backend="bf16")
    assert classifier.backend == "bf16"
    assert any("emulates" in record.getMessage() for record in caplog.records)


def test_zero_gpu_wraps_the_runner_with_spaces_gpu(monkeypatch):
    calls: list[str] = []
    fake_spaces = types.ModuleType("spaces")

    def gpu(function):
        def attached(*args, **kwargs):
            calls.append("gpu attached")
            return function(*args, **kwargs)

        return attached

    fake_spaces.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces)

    def runner(inputs):
        calls.append("forward")
        return np.zeros((1, 6), dtype=np.float32)

    zero_gpu = hardware_from(AVX2_ONLY, "AVX2", "test CPU", cuda_device="ZeroGPU device", cuda_bf16=True, zero_gpu=True)
    wrapped = on_zero_gpu(runner, zero_gpu)
    assert wrapped is not runner
    wrapped({})
    assert calls == ["gpu attached", "forward"]
    # Anywhere else the runner is used as it is (and spaces is not needed).
    plain_gpu = hardware_from(AVX2_ONLY, "AVX2", "test CPU", cuda_device="NVIDIA test GPU", cuda_bf16=True)
    assert on_zero_gpu(runner, plain_gpu) is runner


def test_spaces_is_not_imported_off_zero_gpu(monkeypatch):
    from ser.inference import hardware

    monkeypatch.delenv(hardware.ZERO_GPU_ENV_VAR, raising=False)
    assert not hardware.zero_gpu_available()


def test_health_reports_the_choice_and_its_reason(tiny_cnn_dir, monkeypatch):
    monkeypatch.setenv(backends.BACKEND_ENV_VAR, "torch")
    classifier = EmotionClassifier.from_pretrained(tiny_cnn_dir)
    readiness = Readiness()
    readiness.mark_ready("tiny", classifier.backend, classifier.backend_choice.to_dict())
    body = readiness.body()
    assert body["backend"] == "torch" and body["backend_automatic"] is False
    assert "explicitly" in body["backend_reason"] and body["hardware"] == classifier.backend_choice.hardware


def test_a_cpuid_mask_is_named_in_the_description(monkeypatch):
    from ser.inference.hardware import cpuid_mask_level

    monkeypatch.setenv("CPUID_MASK_LEVEL", "avx2")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert cpuid_mask_level() is None  # the variable alone masks nothing
    monkeypatch.setenv("LD_PRELOAD", "/root/.cache/ser/cpu_mask/cpuid_mask-0123456789ab.so")
    assert cpuid_mask_level() == "avx2"
    masked = hardware_from(AVX2_ONLY, "AVX2", "Intel Xeon (test)", cpuid_mask=cpuid_mask_level())
    assert masked.describe() == "Intel Xeon (test), AVX2, bf16 no, VNNI no, AMX no (CPUID masked to avx2)"
    assert "masked" not in AVX2_MACHINE.describe()


def test_this_machine_is_read_as_torch_sees_it():
    from ser.inference.hardware import detect_hardware

    hardware = detect_hardware()
    assert hardware.cpu_capability == torch.backends.cpu.get_cpu_capability().upper()
    assert hardware.has_cuda == torch.cuda.is_available()
    flags = torch.cpu.get_capabilities()
    if not (flags.get("avx512_bf16") or flags.get("amx_bf16")):
        assert not hardware.cpu_bf16  # never bf16 without it in silicon


def test_automatic_choice_compares_an_embedding_model_on_its_class_probabilities(tiny_whisper_ser_dir, monkeypatch):
    """A WhisperSer backend outputs the utterance embedding; candidates must agree on what the head makes of it."""
    calls = _record_time_candidates(monkeypatch)
    classifier = EmotionClassifier.from_pretrained(tiny_whisper_ser_dir)
    (call,) = calls
    to_probabilities = call["to_probabilities"]
    embedding = classifier.embed_batch([classifier.warmup_clip()])
    probabilities = to_probabilities(embedding.reshape(1, -1))
    assert probabilities.shape == (1, len(classifier.labels))
    np.testing.assert_allclose(probabilities, classifier.probabilities_from_embeddings(embedding), atol=1e-6)


def test_the_work_before_each_call_runs_untimed_before_every_timed_call():
    import time

    events = []

    def runner(name):
        def run(inputs):
            events.append(name)
            return np.zeros((1, 2))

        return run

    def gate():
        events.append("gate")
        time.sleep(0.05)  # slow, and not the runners' time

    results = backend_choice.time_candidates({"torch": runner("torch"), "onnx": runner("onnx")}, {}, repeats=2, before_each=gate)
    assert events == ["torch", "onnx"] + ["gate", "torch", "gate", "onnx"] * 2  # one untimed call each, then gate + call
    assert max(result.median_ms for result in results.values()) < 40


def test_the_app_times_the_automatic_choice_after_its_quality_gate(tiny_cnn_dir, monkeypatch):
    import app

    monkeypatch.delenv(backends.BACKEND_ENV_VAR, raising=False)
    monkeypatch.delenv(backend_choice.AUTO_LOSSY_ENV_VAR, raising=False)
    monkeypatch.setattr(backends, "detect_hardware", lambda: BF16_MACHINE)
    calls = _record_time_candidates(monkeypatch)
    gated = []
    real_assess = app.assess_quality
    monkeypatch.setattr(app, "assess_quality", lambda *args, **kwargs: gated.append(len(args[0])) or real_assess(*args, **kwargs))
    classifier = app.load_classifier(str(tiny_cnn_dir))
    assert calls[0]["before_each"] is not None and classifier.backend_choice.automatic
    timed_calls = backend_choice.SELECTION_REPEATS * len(calls[0]["runners"])
    assert len(gated) == timed_calls and set(gated) == {len(classifier.warmup_clip())}
