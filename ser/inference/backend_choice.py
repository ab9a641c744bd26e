"""The automatic backend choice: which candidates this machine allows, timing them on the warm-up
clip, and keeping the fastest that agrees with fp32 ``torch`` (lossy ones only when clearly faster)."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ser.inference.backend_names import BACKENDS, UnknownBackendError
from ser.inference.hardware import Hardware

logger = logging.getLogger(__name__)

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

AUTO_LOSSY_ENV_VAR = "SER_AUTO_LOSSY"
LOSSY_BACKENDS = ("bf16", "onnx-int8")
#: Why the lossy backends are left out by default: one warm-up clip cannot show a real-clip top-1
#: agreement of 99.5 %, and on random-weight wav2vec2-base (near-ties) neither reaches it
#: (benchmarks/serving.py, 100 RAVDESS clips: bf16 99.0 %, onnx-int8 99.0 %; docs/backends.md).
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
    before_each: Callable[[], object] | None = None,
) -> dict[str, CandidateResult]:
    """Each runner once untimed (lazy init), then ``repeats`` timed calls, interleaved so load from
    other processes hits all alike; answers compared with ``runners["torch"]`` as class probabilities
    (``to_probabilities`` of a runner's output; default: its softmax, for runners that give logits).

    ``before_each``: untimed work run right before every timed call, as it runs before the model in
    the application (the app's quality gate): a backend is then chosen under the conditions it serves
    in, thread pools woken or left cold by that work included."""
    to_probabilities = to_probabilities or (lambda output: _softmax(np.asarray(output, dtype=np.float64)))
    probabilities = {name: np.asarray(to_probabilities(runner(inputs)), dtype=np.float64) for name, runner in runners.items()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            if before_each is not None:
                before_each()
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


