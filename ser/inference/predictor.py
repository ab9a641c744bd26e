"""The inference object: load once, ``.eval()``, then ``classify_file`` / ``classify_batch``.

Kept in three steps like the transformers audio pipeline (preprocess -> forward -> postprocess),
so the app, the evaluation script and batch prediction all run exactly the same code. Labels are
read from the model's own ``config.id2label``; the sample rate from its feature extractor.

A model with an utterance embedding and swappable standardisation statistics (``classify_embedding``,
e.g. WhisperSer) is served in two parts: the backend runs only the embedding step, and a copy of the
small head stays in torch fp32 here, so every backend gives embeddings and a clip can be classified
with the training statistics (the default) or a speaker's / corpus's own (``ser.core.statistics``).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from ser import models as _register_models  # noqa: F401  (registers the package's own architectures)
from ser.audio.loader import EmptyAudioError, load_audio
from ser.core.statistics import EmbeddingStatistics
from ser.inference.adaptation import AdaptationUnsupportedError
from ser.inference.backends import BackendChoice, choose_and_build, requested_backend

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The model shipped with the project (trained by train.py on RAVDESS; see model_card.md).
BUNDLED_MODEL_DIR = REPO_ROOT / "models" / "ser-multicorpus"
MODEL_ENV_VAR = "SER_MODEL"

#: Clips longer than this are scored window by window and the probabilities averaged, so memory
#: stays bounded whatever the length.
DEFAULT_WINDOW_S = 20.0
#: The warm-up clip: run once at load (so the first user does not pay for lazy initialisation) and,
#: for the automatic backend choice, the clip every candidate is timed on. 3 s is a typical request.
WARMUP_CLIP_S = 3.0


class ModelNotConfiguredError(RuntimeError):
    """No model was given and the bundled one is missing."""


#: Sub-modules that only the embedding step of a ``classify_embedding`` model uses (WhisperSer's
#: log-mel and encoder): left out of the head's copy, which would otherwise duplicate the encoder.
_EMBEDDING_ONLY_MODULES = ("log_mel", "encoder")


class _BackendOutput(NamedTuple):
    # Named ``logits`` because that is the field every backend reads; here it is the embedding.
    logits: torch.Tensor


class UtteranceEmbedder(torch.nn.Module):
    """The embedding step of a ``classify_embedding`` model, flattened to ``(batch, layers * features)``:
    what the backends run (export, bf16, cuda) for such a model. ``config`` is the model's, so cache
    fingerprints and the exporter see the model they serve."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> _BackendOutput:
        return _BackendOutput(self.model.embed(input_values, attention_mask).flatten(1))


def supports_adaptation(model: torch.nn.Module) -> bool:
    return callable(getattr(model, "classify_embedding", None)) and callable(getattr(model, "embed", None))


def _head_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A torch fp32 copy of the model without its embedding-only modules (they map to empty modules in
    the deepcopy memo), so the head and its training statistics survive whatever the backend does to
    the original (bf16 in place, moved to the GPU, freed after ONNX export)."""
    memo = {id(getattr(model, name)): torch.nn.Module() for name in _EMBEDDING_ONLY_MODULES if isinstance(getattr(model, name, None), torch.nn.Module)}
    return copy.deepcopy(model, memo).float().eval()


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


def window_spans(num_samples: int, window_samples: int) -> list[tuple[int, int]]:
    """``[start, end)`` sample spans that cover ``num_samples`` in windows of ``window_samples``; a
    tail shorter than a quarter window is joined to the window before it rather than scored alone
    (so no span is shorter than that, except a clip shorter than it, and none longer than 1.25 windows).

    >>> window_spans(50, 20)
    [(0, 20), (20, 40), (40, 50)]
    >>> window_spans(44, 20)
    [(0, 20), (20, 44)]
    """
    if num_samples <= 0 or window_samples <= 0:
        raise ValueError(f"Need a positive length and window, got {num_samples} samples and a {window_samples}-sample window.")
    spans = [(start, min(start + window_samples, num_samples)) for start in range(0, num_samples, window_samples)]
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < window_samples // 4:
        tail_end = spans.pop()[1]
        spans[-1] = (spans[-1][0], tail_end)
    return spans


class EmotionClassifier:
    """A frozen audio-classification model with its feature extractor, served by one backend.

    ``backend`` (see :data:`ser.inference.backends.BACKENDS`) decides how ``forward`` runs: ``torch`` is the
    fp32 reference; ``None`` chooses for this machine (:func:`ser.inference.backends.choose_and_build`, which
    times the candidates on :meth:`warmup_clip`); ``self.backend_choice`` says what was chosen and
    why. The ONNX backends do not keep the torch module after export (``self.model`` is then
    ``None``; ``self.config`` stays). ``release_model=True`` also frees its weights (set by
    ``from_pretrained``, which owns the model it loads). For a model with an embedding
    (``supports_adaptation``) the backend runs its :class:`UtteranceEmbedder` (``self.model``), and
    ``statistics=`` arguments swap the standardisation statistics (``ser.core.statistics``).
    ``before_each_call(waveform)``: what the application runs right before each model call (the
    app's quality gate); the automatic choice runs it on the warm-up clip before every timed call.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        feature_extractor,
        name: str,
        window_s: float = DEFAULT_WINDOW_S,
        backend: str | None = "torch",
        release_model: bool = False,
        before_each_call: Callable[[np.ndarray], object] | None = None,
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
        # With an embedding: the backend runs the embedding step, the head stays here (see the module doc).
        self._head: torch.nn.Module | None = _head_copy(model) if supports_adaptation(model) else None
        self.embedding_shape: tuple[int, ...] | None = None
        if self._head is not None:
            self.embedding_shape = tuple(self._head.embedding_mean.shape)
            model = UtteranceEmbedder(model)
        built, choice = choose_and_build(
            model,
            name,
            self.sample_rate,
            self._uses_attention_mask,
            warmup_inputs=lambda: self.preprocess([self.warmup_clip()]),
            requested=requested_backend(backend),
            release_torch_weights=release_model,
            before_each=None if before_each_call is None else (lambda: before_each_call(self.warmup_clip())),
            # An embedding model's backend gives embeddings: candidates are compared on the head's probabilities.
            to_probabilities=(lambda output: self.probabilities_from_embeddings(np.asarray(output).reshape(-1, *self.embedding_shape)))
            if self._head is not None
            else None,
        )
        self.backend: str = built.name
        self.backend_info = built
        self.backend_choice: BackendChoice = choice
        self._runner = built.runner
        self.model: torch.nn.Module | None = built.module
        logger.info("Backend %s: %s [%s]", choice.name, choice.reason, choice.hardware)
        for left_out, why in choice.excluded.items():
            logger.info("  not %s: %s", left_out, why)

    @classmethod
    def from_pretrained(
        cls, model_name_or_path: str | os.PathLike | None = None, backend: str | None = None, **kwargs
    ) -> "EmotionClassifier":
        """Load a local folder or a hub id (``None``: ``$SER_MODEL`` or the bundled model).

        ``backend``: explicit, else ``$SER_BACKEND``, else (or ``auto``) the fastest one that agrees
        with fp32 on this machine (:func:`ser.inference.backends.choose_and_build`).
        """
        name = resolve_model_path(model_name_or_path)
        requested = requested_backend(backend)  # an unknown name fails before the model is loaded
        started = time.perf_counter()
        feature_extractor = AutoFeatureExtractor.from_pretrained(name)
        model = AutoModelForAudioClassification.from_pretrained(name)
        kwargs.setdefault("release_model", True)  # the model was loaded here: nobody else holds it
        classifier = cls(model, feature_extractor, name=name, backend=requested, **kwargs)
        logger.info(
            "Loaded %s (%s, backend %s) in %.1f s", name, type(model).__name__, classifier.backend, time.perf_counter() - started
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

    def forward(self, inputs: dict[str, torch.Tensor], statistics: EmbeddingStatistics | None = None) -> np.ndarray:
        """Features -> logits ``(batch, labels)`` as float32, on the chosen backend (for a model with an
        embedding: the embedding there, then the head here, standardised with ``statistics``, default
        the training set's)."""
        if self._head is None:
            self._check_adaptable(statistics)
            return np.asarray(self._runner(inputs), dtype=np.float32)
        return self.logits_from_embeddings(self._embed_features(inputs), statistics)

    def _embed_features(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        flat = np.asarray(self._runner(inputs), dtype=np.float32)
        return flat.reshape(flat.shape[0], *self.embedding_shape)

    @property
    def supports_adaptation(self) -> bool:
        """Whether statistics can be swapped (``embed_batch``, ``statistics=`` arguments)."""
        return self._head is not None

    def _check_adaptable(self, statistics: EmbeddingStatistics | None = None) -> None:
        if self._head is None and statistics is not None:
            raise AdaptationUnsupportedError(self._unsupported_message())
        if statistics is not None and tuple(statistics.mean.shape) != self.embedding_shape:
            raise ValueError(f"Statistics of shape {tuple(statistics.mean.shape)} do not fit this model's embedding {self.embedding_shape}.")

    def _unsupported_message(self) -> str:
        return (
            f"{Path(self.name).name} ({self.config.model_type}) has no utterance embedding with swappable statistics, "
            "so it cannot adapt to a speaker, corpus or recording; use a WhisperSer model (train.py on a Whisper encoder)."
        )

    @torch.inference_mode()
    def logits_from_embeddings(self, embeddings: np.ndarray, statistics: EmbeddingStatistics | None = None) -> np.ndarray:
        """Embeddings ``(batch, *embedding_shape)`` -> logits, standardised with ``statistics`` (default: training)."""
        if self._head is None:
            raise AdaptationUnsupportedError(self._unsupported_message())
        self._check_adaptable(statistics)
        mean = var = None
        if statistics is not None:
            mean = torch.from_numpy(np.asarray(statistics.mean, dtype=np.float32))
            var = torch.from_numpy(np.asarray(statistics.variance, dtype=np.float32))
        logits, _ = self._head.classify_embedding(torch.from_numpy(np.asarray(embeddings, dtype=np.float32)), mean, var)
        return logits.float().numpy()

    def probabilities_from_embeddings(self, embeddings: np.ndarray, statistics: EmbeddingStatistics | None = None) -> np.ndarray:
        return self.postprocess(self.logits_from_embeddings(embeddings, statistics))

    def postprocess(self, logits: np.ndarray) -> np.ndarray:
        """Logits ``(batch, labels)`` -> probabilities."""
        return _softmax(logits.astype(np.float64))

    # -- public API ------------------------------------------------------------------------------
    def predict_proba(self, waveforms: Sequence[np.ndarray], statistics: EmbeddingStatistics | None = None) -> np.ndarray:
        """Probabilities ``(len(waveforms), len(labels))`` for 16 kHz-style waveforms at ``sample_rate``
        (batched as :meth:`_per_clip` says). ``statistics`` (models with an embedding only):
        standardise with these instead of the training set's.
        """
        self._check_adaptable(statistics)
        if self._head is not None:
            return self.probabilities_from_embeddings(self.embed_batch(waveforms), statistics)
        return self._per_clip(waveforms, lambda features: self.postprocess(self.forward(features)))

    def _per_clip(self, waveforms: Sequence[np.ndarray], step) -> np.ndarray:
        """``step`` (features -> one row per clip) over ``waveforms``, one row each.

        Models without an attention mask (wav2vec2-base) would see zero padding as audio, so they are
        run one clip at a time; the others are padded into one batch. A clip longer than the window is
        run window by window and its rows averaged, weighted by length.
        """
        for waveform in waveforms:
            if len(waveform) == 0:
                raise EmptyAudioError("The audio is empty (0 samples).")
        window = int(self.window_s * self.sample_rate)
        if any(len(waveform) > window for waveform in waveforms):
            return np.stack([self._windowed(waveform, window, step) for waveform in waveforms])
        if self._uses_attention_mask or len(waveforms) == 1:
            return step(self.preprocess(waveforms))
        return np.concatenate([step(self.preprocess([waveform])) for waveform in waveforms])

    def _windowed(self, waveform: np.ndarray, window: int, step) -> np.ndarray:
        pieces = [waveform[start:end] for start, end in window_spans(len(waveform), window)]
        weights = np.array([len(piece) for piece in pieces], dtype=np.float64)
        rows = np.concatenate([step(self.preprocess([piece])) for piece in pieces]).astype(np.float64)
        return np.tensordot(weights, rows, axes=1) / weights.sum()

    def embed_batch(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Utterance embeddings ``(len(waveforms), *embedding_shape)`` float32, before any standardisation:
        what speaker / corpus statistics are computed from (``EmbeddingStatistics.of``).

        A clip longer than the window is embedded window by window and the embeddings averaged,
        weighted by length (for the mean features that is exactly the whole clip's), so every clip
        has one embedding, classified like any other. Raises :class:`AdaptationUnsupportedError`
        for a model without one.
        """
        if self._head is None:
            raise AdaptationUnsupportedError(self._unsupported_message())
        if not waveforms:
            return np.zeros((0, *self.embedding_shape), np.float32)
        return self._per_clip(waveforms, self._embed_features).astype(np.float32, copy=False)

    def _to_prediction(self, probabilities: np.ndarray, num_samples: int) -> Prediction:
        best = int(np.argmax(probabilities))
        return Prediction(
            label=self.labels[best],
            confidence=float(probabilities[best]),
            probabilities={label: float(value) for label, value in zip(self.labels, probabilities)},
            duration_s=num_samples / self.sample_rate,
        )

    def classify_batch(self, waveforms: Sequence[np.ndarray], statistics: EmbeddingStatistics | None = None) -> list[Prediction]:
        """One :class:`Prediction` per waveform; ``statistics``: see :meth:`predict_proba`."""
        probabilities = self.predict_proba(waveforms, statistics)
        return [self._to_prediction(row, len(waveform)) for row, waveform in zip(probabilities, waveforms)]

    def classify_embeddings(
        self, embeddings: np.ndarray, num_samples: Sequence[int], statistics: EmbeddingStatistics | None = None
    ) -> list[Prediction]:
        """Predictions from embeddings already computed by :meth:`embed_batch` (the second pass of an
        adapted run: embed everything, compute the statistics, then classify); ``num_samples`` per clip
        gives ``duration_s``."""
        probabilities = self.probabilities_from_embeddings(embeddings, statistics)
        return [self._to_prediction(row, samples) for row, samples in zip(probabilities, num_samples)]

    def classify_waveform(self, waveform: np.ndarray, statistics: EmbeddingStatistics | None = None) -> Prediction:
        return self.classify_batch([waveform], statistics)[0]

    def classify_file(self, path: str | os.PathLike, statistics: EmbeddingStatistics | None = None) -> Prediction:
        return self.classify_waveform(load_audio(path, self.sample_rate), statistics)

    def warmup_clip(self, duration_s: float = WARMUP_CLIP_S) -> np.ndarray:
        """A fixed voiced-sounding clip (a tone with harmonics and a moving pitch, plus noise): it
        exercises the model like speech does, unlike silence, and is the same at every start."""
        rng = np.random.default_rng(0)
        time_s = np.arange(int(duration_s * self.sample_rate)) / self.sample_rate
        pitch_hz = 140.0 + 30.0 * np.sin(2 * np.pi * 0.7 * time_s)
        phase = 2 * np.pi * np.cumsum(pitch_hz) / self.sample_rate
        tone = sum(np.sin(harmonic * phase) / harmonic for harmonic in range(1, 6))
        return (0.2 * tone + 0.02 * rng.standard_normal(time_s.size)).astype(np.float32)

    def warmup(self, duration_s: float = WARMUP_CLIP_S) -> None:
        """One throw-away forward pass so the first user does not pay for lazy initialisation."""
        self.predict_proba([self.warmup_clip(duration_s)])
