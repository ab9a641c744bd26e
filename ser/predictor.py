"""The inference object: load once, ``.eval()``, then ``classify_file`` / ``classify_batch``.

Kept in three steps like the transformers audio pipeline (preprocess -> forward -> postprocess),
so the app, the evaluation script and batch prediction all run exactly the same code. Labels are
read from the model's own ``config.id2label``; the sample rate from its feature extractor.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from . import models as _register_models  # noqa: F401  (registers the package's own architectures)
from .audio import EmptyAudioError, load_audio
from .backends import build_backend, resolve_backend

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The model shipped with the project (trained by train.py on RAVDESS; see model_card.md).
BUNDLED_MODEL_DIR = REPO_ROOT / "models" / "ser-ravdess"
MODEL_ENV_VAR = "SER_MODEL"

#: Clips longer than this are scored window by window and the probabilities averaged, so memory
#: stays bounded whatever the length.
DEFAULT_WINDOW_S = 20.0


class ModelNotConfiguredError(RuntimeError):
    """No model was given and the bundled one is missing."""


def resolve_model_path(model_name_or_path: str | os.PathLike | None = None) -> str:
    """Explicit argument, else ``$SER_MODEL``, else the bundled model."""
    if model_name_or_path:
        return str(model_name_or_path)
    if os.environ.get(MODEL_ENV_VAR):
        return os.environ[MODEL_ENV_VAR]
    if (BUNDLED_MODEL_DIR / "config.json").is_file():
        return str(BUNDLED_MODEL_DIR)
    raise ModelNotConfiguredError(
        f"No model configured: pass --model PATH_OR_HUB_ID or set {MODEL_ENV_VAR} "
        f"(e.g. a folder written by train.py); the bundled model {BUNDLED_MODEL_DIR} is missing."
    )


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]
    duration_s: float


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class EmotionClassifier:
    """A frozen audio-classification model with its feature extractor, served by one backend.

    ``backend`` (see :data:`ser.backends.BACKENDS`) decides how ``forward`` runs: ``torch`` is the
    fp32 reference; the ONNX backends do not keep the torch module after export (``self.model`` is
    then ``None``; ``self.config`` stays). ``release_model=True`` also frees its weights (set by
    ``from_pretrained``, which owns the model it loads).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        feature_extractor,
        name: str,
        window_s: float = DEFAULT_WINDOW_S,
        backend: str = "torch",
        release_model: bool = False,
    ):
        model = model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.config = model.config
        self.feature_extractor = feature_extractor
        self.name = name
        self.window_s = window_s
        id2label = model.config.id2label
        self.labels: list[str] = [id2label[index] for index in sorted(int(key) for key in id2label)]
        self.sample_rate: int = int(feature_extractor.sampling_rate)
        self._uses_attention_mask = bool(getattr(feature_extractor, "return_attention_mask", False))
        built = build_backend(
            resolve_backend(backend, model.config.model_type), model, name, self.sample_rate, self._uses_attention_mask, release_torch_weights=release_model
        )
        self.backend: str = built.name
        self.backend_info = built
        self._runner = built.runner
        self.model: torch.nn.Module | None = model if built.keeps_torch_model else None

    @classmethod
    def from_pretrained(
        cls, model_name_or_path: str | os.PathLike | None = None, backend: str | None = None, **kwargs
    ) -> "EmotionClassifier":
        """Load a local folder or a hub id (``None``: ``$SER_MODEL`` or the bundled model).

        ``backend``: explicit, else ``$SER_BACKEND``, else the fastest one that agrees with fp32 for
        this architecture (:func:`ser.backends.resolve_backend`).
        """
        name = resolve_model_path(model_name_or_path)
        resolve_backend(backend)  # an unknown name fails before the model is loaded
        started = time.perf_counter()
        feature_extractor = AutoFeatureExtractor.from_pretrained(name)
        model = AutoModelForAudioClassification.from_pretrained(name)
        backend = resolve_backend(backend, model.config.model_type)
        kwargs.setdefault("release_model", True)  # the model was loaded here: nobody else holds it
        classifier = cls(model, feature_extractor, name=name, backend=backend, **kwargs)
        logger.info(
            "Loaded %s (%s, backend %s) in %.1f s", name, type(model).__name__, backend, time.perf_counter() - started
        )
        return classifier

    # -- the three steps -------------------------------------------------------------------------
    def preprocess(self, waveforms: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        features = self.feature_extractor(
            [np.asarray(waveform, dtype=np.float32) for waveform in waveforms],
            sampling_rate=self.sample_rate,
            padding=True,
            return_attention_mask=self._uses_attention_mask,
            return_tensors="pt",
        )
        return dict(features)

    def forward(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        """Features -> logits ``(batch, labels)`` as float32, on the chosen backend."""
        return np.asarray(self._runner(inputs), dtype=np.float32)

    def postprocess(self, logits: np.ndarray) -> np.ndarray:
        """Logits ``(batch, labels)`` -> probabilities."""
        return _softmax(logits.astype(np.float64))

    # -- public API ------------------------------------------------------------------------------
    def predict_proba(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities ``(len(waveforms), len(labels))`` for 16 kHz-style waveforms at ``sample_rate``.

        Models without an attention mask (wav2vec2-base) would see zero padding as audio, so
        they are run one clip at a time; the others are padded into one batch.
        """
        for waveform in waveforms:
            if len(waveform) == 0:
                raise EmptyAudioError("The audio is empty (0 samples).")
        window = int(self.window_s * self.sample_rate)
        if any(len(waveform) > window for waveform in waveforms):
            return np.stack([self._windowed_proba(waveform, window) for waveform in waveforms])
        if self._uses_attention_mask or len(waveforms) == 1:
            return self.postprocess(self.forward(self.preprocess(waveforms)))
        return np.concatenate([self.postprocess(self.forward(self.preprocess([waveform]))) for waveform in waveforms])

    def _windowed_proba(self, waveform: np.ndarray, window: int) -> np.ndarray:
        starts = range(0, len(waveform), window)
        pieces = [waveform[start : start + window] for start in starts]
        # A short tail is merged into the previous window rather than scored on its own.
        if len(pieces) > 1 and len(pieces[-1]) < window // 4:
            pieces[-2] = np.concatenate([pieces[-2], pieces.pop()])
        probabilities = np.concatenate([self.postprocess(self.forward(self.preprocess([piece]))) for piece in pieces])
        weights = np.array([len(piece) for piece in pieces], dtype=np.float64)
        return (probabilities * weights[:, None]).sum(axis=0) / weights.sum()

    def _to_prediction(self, probabilities: np.ndarray, num_samples: int) -> Prediction:
        best = int(np.argmax(probabilities))
        return Prediction(
            label=self.labels[best],
            confidence=float(probabilities[best]),
            probabilities={label: float(value) for label, value in zip(self.labels, probabilities)},
            duration_s=num_samples / self.sample_rate,
        )

    def classify_batch(self, waveforms: Sequence[np.ndarray]) -> list[Prediction]:
        probabilities = self.predict_proba(waveforms)
        return [self._to_prediction(row, len(waveform)) for row, waveform in zip(probabilities, waveforms)]

    def classify_waveform(self, waveform: np.ndarray) -> Prediction:
        return self.classify_batch([waveform])[0]

    def classify_file(self, path: str | os.PathLike) -> Prediction:
        return self.classify_waveform(load_audio(path, self.sample_rate))

    def warmup(self, duration_s: float = 1.0) -> None:
        """One throw-away forward pass so the first user does not pay for lazy initialisation."""
        rng = np.random.default_rng(0)
        self.predict_proba([rng.normal(0, 0.05, int(duration_s * self.sample_rate)).astype(np.float32)])
