"""Utterance embeddings of a frozen encoder, computed once per clip (and per fixed augmented copy)
and cached on disk, so training a head (and each cross-validation fold) takes seconds, not an
encoder pass per epoch.

A cache entry is one hidden state's pooled statistics, keyed by that state's fingerprint (the front
end, the embedding settings and the encoder blocks below it), the clip's path, size and modification
time, and the copy's name: a changed clip or different blocks are embedded afresh, never read stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ser.audio.augment import fixed_copy
from ser.inference.onnx_export import cache_root, update_with_tensors

logger = logging.getLogger(__name__)

ORIGINAL = "original"


def default_cache_dir() -> Path:
    return cache_root() / "embeddings"


def state_fingerprints(model) -> list[str]:
    """One sha256 per hidden state ``0..blocks``: state ``i`` depends on the front end, the embedding
    settings and blocks ``1..i`` only, so models that share those blocks share its cache entries."""
    digest = hashlib.sha256()
    settings = {key: getattr(model.config, key) for key in ("input_rms", "sampling_rate")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    update_with_tensors(digest, model.log_mel.state_dict(), "log_mel.")
    for name in ("conv1", "conv2", "embed_positions"):
        update_with_tensors(digest, getattr(model.encoder, name).state_dict(), f"{name}.")
    fingerprints = [digest.hexdigest()]
    for block in model.encoder.layers:
        digest = hashlib.sha256(fingerprints[-1].encode())
        update_with_tensors(digest, block.state_dict(), "block.")
        fingerprints.append(digest.hexdigest())
    return fingerprints


class EmbeddingCache:
    """One ``.npy`` per (clip, copy, hidden state) under ``root``."""

    def __init__(self, root: str | Path):
        self.directory = Path(root)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, clip_path: str, copy: str, state_fingerprint: str) -> Path:
        source = Path(clip_path)
        stat = source.stat()
        key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{copy}|{state_fingerprint}"
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / digest[:2] / (digest[2:34] + ".npy")

    def get(self, clip_path: str, copy: str, state_fingerprint: str) -> np.ndarray | None:
        try:
            return np.load(self.path_for(clip_path, copy, state_fingerprint))
        except (OSError, ValueError):
            return None

    def put(self, clip_path: str, copy: str, state_fingerprint: str, embedding: np.ndarray) -> None:
        path = self.path_for(clip_path, copy, state_fingerprint)
        path.parent.mkdir(exist_ok=True)
        # Write then rename: a concurrent fold never reads half a file.
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as handle:
            np.save(handle, embedding.astype(np.float32))
        os.replace(handle.name, path)


@torch.inference_mode()
def embed_waveforms(
    model, feature_extractor, waveforms: Sequence[np.ndarray], states: Sequence[int] | None = None, batch_size: int = 8
) -> np.ndarray:
    """``(clips, states, features)`` pooled hidden states (default: the model's own layers); clips are
    batched by length (the result does not depend on the batching: padding is masked)."""
    states = list(model.config.layers if states is None else states)
    order = sorted(range(len(waveforms)), key=lambda index: len(waveforms[index]))
    results: list[np.ndarray | None] = [None] * len(waveforms)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = feature_extractor(
            [waveforms[index] for index in indices],
            sampling_rate=feature_extractor.sampling_rate,
            padding=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        embeddings = model.pooled_states(batch["input_values"], batch.get("attention_mask"), states).float().numpy()
        for index, embedding in zip(indices, embeddings):
            results[index] = embedding
    return np.stack(results)


def cached_embeddings(
    model,
    feature_extractor,
    clip_paths: Sequence[str],
    waveforms: Sequence[np.ndarray],
    copy: str,
    cache: EmbeddingCache,
    max_duration_s: float = 30.0,
) -> np.ndarray:
    """The model's embeddings ``(clips, layers, features)`` of ``copy`` (``"original"`` or a
    :func:`ser.audio.augment.parse_fixed_copies` name) of each clip, read from ``cache`` or computed
    (centre-cropped to ``max_duration_s``). A computed clip stores every hidden state, so a later
    model choosing other layers of the same blocks finds them."""
    sample_rate = int(feature_extractor.sampling_rate)
    fingerprints = state_fingerprints(model)
    layers = list(model.config.layers)

    def lookup(index: int) -> np.ndarray | None:
        parts = [cache.get(clip_paths[index], copy, fingerprints[layer]) for layer in layers]
        return None if any(part is None for part in parts) else np.stack(parts)

    found = [lookup(index) for index in range(len(clip_paths))]
    missing = [index for index, embedding in enumerate(found) if embedding is None]
    if missing:
        started = time.perf_counter()
        logger.info("Embedding %d of %d clips (%s) with the frozen encoder; cached in %s", len(missing), len(clip_paths), copy, cache.directory)
        all_states = list(range(len(fingerprints)))
        max_samples = int(max_duration_s * sample_rate)
        chunk = 64  # store as we go, so an interrupted run keeps what it computed
        for begin in range(0, len(missing), chunk):
            indices = missing[begin : begin + chunk]
            inputs = []
            for index in indices:
                waveform = waveforms[index]
                if copy != ORIGINAL:
                    seed = int(hashlib.sha256(f"{clip_paths[index]}|{copy}".encode()).hexdigest()[:8], 16)
                    waveform = fixed_copy(waveform, copy, sample_rate, seed)
                if len(waveform) > max_samples:
                    start = (len(waveform) - max_samples) // 2
                    waveform = waveform[start : start + max_samples]
                inputs.append(waveform)
            for index, pooled in zip(indices, embed_waveforms(model, feature_extractor, inputs, all_states)):
                for state, fingerprint in enumerate(fingerprints):
                    cache.put(clip_paths[index], copy, fingerprint, pooled[state])
                found[index] = pooled[layers]
            logger.info("  %d / %d clips embedded", min(begin + chunk, len(missing)), len(missing))
        logger.info("Embedded %d clips in %.0f s", len(missing), time.perf_counter() - started)
    return np.stack(found)
