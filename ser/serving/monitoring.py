"""Production monitoring for the Space: Prometheus metrics, a drift figure, and readiness for ``/health``.

Every app instance owns a private :class:`prometheus_client.CollectorRegistry`, so several demos
(tests) never collide on metric names. What is measured, per request:

* ``ser_requests_total{outcome}``: ``answered`` / ``rejected_input`` (the audio was refused with a
  user message) / ``refused`` (payload refused before the handler: URL or foreign server path,
  malformed body) / ``timeout`` / ``error`` (unexpected).
* ``ser_request_latency_seconds``: handler wall time (decode + model), a histogram (p50/p95 via
  ``histogram_quantile``).
* ``ser_predictions_total{label}``, ``ser_low_confidence_total`` (top probability below the
  confidence threshold), ``ser_rejected_inputs_total{reason}``.
* Live mode: ``ser_live_sessions_recording`` (sessions holding a recording now) and
  ``ser_live_sessions_open`` (sessions known, recording or keeping a calibration), gauges read at
  scrape time; ``ser_live_updates_total{kind}`` (``voiced`` / ``listening`` / ``limit`` / ``refused``)
  and ``ser_live_update_seconds`` (server time per update, a histogram);
  ``ser_live_recordings_ended_total{how}`` (``stop`` / ``stop_failed`` / ``closed``: tab closed or
  connection lost).
* ``ser_prediction_drift_kl``: KL divergence (nats) between the predicted-class mix of the last N
  answers and the training class prior read from the model folder's ``split.json`` (train split
  label counts, written by train.py); a uniform prior when the file is absent (the metric's help
  text says which prior is in use).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)

#: The answers the drift figure is computed over.
DEFAULT_DRIFT_WINDOW = 200
#: Added to every class share before the KL divergence, so a class absent from the window (or
#: from the prior) gives a large but finite value instead of infinity.
DRIFT_SMOOTHING = 1e-3
#: Seconds; covers a few ms (tiny model) to tens of seconds (wav2vec2 on a long clip, or a timeout).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

OUTCOMES = ("answered", "rejected_input", "refused", "timeout", "error")
#: What one live update did (``ser.serving.live.LiveUpdate.kind``, and ``refused`` for an unusable slice).
LIVE_UPDATE_KINDS = ("voiced", "listening", "limit", "refused")
#: How a live recording ended.
LIVE_ENDINGS = ("stop", "stop_failed", "closed")
#: Seconds per live update: a few ms (listening) to a second (a busy machine).
LIVE_UPDATE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class ClassPrior:
    """Training class shares in the model's label order, and where they came from."""

    probabilities: dict[str, float]
    source: str


def load_class_prior(model_dir: str | Path | None, labels: Sequence[str]) -> ClassPrior:
    """The train split's label shares from ``<model_dir>/split.json``; uniform when unavailable.

    ``model_dir`` may be a hub id (no local folder): uniform as well.
    """
    uniform = ClassPrior({label: 1.0 / len(labels) for label in labels}, "uniform (no split.json in the model folder)")
    if model_dir is None:
        return uniform
    split_path = Path(model_dir) / "split.json"
    if not split_path.is_file():
        return uniform
    try:
        counts = json.loads(split_path.read_text())["train"]["label_counts"]
        per_label = {label: float(counts.get(label, 0)) for label in labels}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        logger.warning("Cannot read the class prior from %s (%s); using a uniform prior.", split_path, error)
        return ClassPrior(uniform.probabilities, f"uniform (unreadable {split_path.name})")
    total = sum(per_label.values())
    if total <= 0:
        return ClassPrior(uniform.probabilities, f"uniform (no train label counts in {split_path.name})")
    return ClassPrior({label: count / total for label, count in per_label.items()}, f"train split of {split_path.name}")


def kl_divergence(observed: Mapping[str, float], prior: Mapping[str, float], smoothing: float = DRIFT_SMOOTHING) -> float:
    """KL(observed || prior) in nats over the prior's labels; both are smoothed and renormalised."""
    labels = list(prior)
    observed_total = sum(observed.get(label, 0.0) for label in labels)
    if observed_total <= 0:
        return 0.0
    p = [observed.get(label, 0.0) / observed_total + smoothing for label in labels]
    q = [prior[label] + smoothing for label in labels]
    p_sum, q_sum = sum(p), sum(q)
    return float(sum((pi / p_sum) * math.log((pi / p_sum) / (qi / q_sum)) for pi, qi in zip(p, q) if pi > 0))


class AppMetrics:
    """The app's metrics in a private registry; thread-safe (Gradio runs handlers in worker threads)."""

    def __init__(
        self,
        labels: Sequence[str],
        prior: ClassPrior,
        confidence_threshold: float,
        drift_window: int = DEFAULT_DRIFT_WINDOW,
    ):
        if drift_window < 1:
            raise ValueError(f"drift_window must be at least 1, got {drift_window}.")
        self.labels = list(labels)
        self.prior = prior
        self.confidence_threshold = confidence_threshold
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._window: collections.deque[str] = collections.deque(maxlen=drift_window)
        self.requests = Counter(
            "ser_requests", "Prediction requests by outcome.", ["outcome"], registry=self.registry
        )
        for outcome in OUTCOMES:  # exported at 0 from the start, so rates work before the first event
            self.requests.labels(outcome=outcome)
        self.latency = Histogram(
            "ser_request_latency_seconds",
            "Handler wall time per request (decode + model), seconds.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.predictions = Counter("ser_predictions", "Answers by predicted (top) class.", ["label"], registry=self.registry)
        for label in self.labels:
            self.predictions.labels(label=label)
        self.low_confidence = Counter(
            "ser_low_confidence",
            f"Answers whose top probability is below the confidence threshold ({confidence_threshold:g}).",
            registry=self.registry,
        )
        self.rejected_inputs = Counter(
            "ser_rejected_inputs", "Inputs refused with a user-facing message, by reason.", ["reason"], registry=self.registry
        )
        self.drift = Gauge(
            "ser_prediction_drift_kl",
            f"KL divergence (nats) of the predicted-class mix over the last {drift_window} answers from the class "
            f"prior; prior: {prior.source}.",
            registry=self.registry,
        )
        self.drift_window_answers = Gauge(
            "ser_drift_window_answers", "Answers currently in the drift window.", registry=self.registry
        )
        self.prior_gauge = Gauge("ser_class_prior", f"Class prior used for drift ({prior.source}).", ["label"], registry=self.registry)
        for label, share in prior.probabilities.items():
            self.prior_gauge.labels(label=label).set(share)
        self.live_recording = Gauge("ser_live_sessions_recording", "Live sessions holding a recording now.", registry=self.registry)
        self.live_open = Gauge(
            "ser_live_sessions_open", "Live sessions known to the server (recording, or keeping a calibration).", registry=self.registry
        )
        self.live_updates = Counter("ser_live_updates", "Live updates served, by kind.", ["kind"], registry=self.registry)
        for kind in LIVE_UPDATE_KINDS:
            self.live_updates.labels(kind=kind)
        self.live_update_latency = Histogram(
            "ser_live_update_seconds", "Server time per live update (append, VAD, model), seconds.",
            buckets=LIVE_UPDATE_BUCKETS_S, registry=self.registry,
        )
        self.live_endings = Counter("ser_live_recordings_ended", "Live recordings ended, by how.", ["how"], registry=self.registry)
        for how in LIVE_ENDINGS:
            self.live_endings.labels(how=how)

    def track_live_sessions(self, recording: Callable[[], int], known: Callable[[], int]) -> None:
        """Read the live session counts at every scrape (``ser.serving.live.LiveSessions``)."""
        self.live_recording.set_function(recording)
        self.live_open.set_function(known)

    def observe_live_update(self, kind: str, server_s: float) -> None:
        if kind not in LIVE_UPDATE_KINDS:
            raise ValueError(f"Unknown live update kind {kind!r}; expected one of {LIVE_UPDATE_KINDS}.")
        self.live_updates.labels(kind=kind).inc()
        self.live_update_latency.observe(server_s)

    def observe_live_end(self, how: str) -> None:
        if how not in LIVE_ENDINGS:
            raise ValueError(f"Unknown live ending {how!r}; expected one of {LIVE_ENDINGS}.")
        self.live_endings.labels(how=how).inc()

    def observe_answer(self, probabilities: Mapping[str, float], latency_s: float) -> None:
        top_label = max(probabilities, key=probabilities.get)
        with self._lock:
            self.requests.labels(outcome="answered").inc()
            self.latency.observe(latency_s)
            self.predictions.labels(label=top_label).inc()
            if probabilities[top_label] < self.confidence_threshold:
                self.low_confidence.inc()
            self._window.append(top_label)
            self.drift.set(kl_divergence(collections.Counter(self._window), self.prior.probabilities))
            self.drift_window_answers.set(len(self._window))

    def observe_failure(self, outcome: str, latency_s: float | None = None, reason: str | None = None) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"Unknown outcome {outcome!r}; expected one of {OUTCOMES}.")
        with self._lock:
            self.requests.labels(outcome=outcome).inc()
            if latency_s is not None:
                self.latency.observe(latency_s)
            if reason is not None:
                self.rejected_inputs.labels(reason=reason).inc()

    def recent_mix(self) -> dict[str, float]:
        """Share of each class among the answers in the drift window (empty window: all zero)."""
        with self._lock:
            counts = collections.Counter(self._window)
            total = len(self._window)
        return {label: (counts[label] / total if total else 0.0) for label in self.labels}

    def exposition(self) -> bytes:
        """The Prometheus text format of this registry (what ``GET /metrics`` returns)."""
        return generate_latest(self.registry)


@dataclass
class Readiness:
    """What ``GET /health`` reports: 503 until the model is loaded and warmed up, then 200.

    ``live_sessions`` (once live mode is wired): ``{"recording": sessions recording now, "limit":
    how many may record at once}``.

    With a backend choice (:meth:`ser.inference.backends.BackendChoice.to_dict`) the body also says why that
    backend serves: ``backend_reason``, ``backend_automatic``, ``hardware`` (CPU model, PyTorch's
    kernel level, bf16 / VNNI / AMX, the GPU), ``backend_timings_ms`` (the candidates timed on the
    warm-up clip) and ``backend_excluded`` (the ones left out, and why).
    """

    model: str | None = None
    backend: str | None = None
    ready: bool = False
    backend_choice: dict | None = None
    #: ``() -> {"recording": n, "limit": m}``: live mode's sessions, reported as ``live_sessions``.
    live_sessions: Callable[[], dict] | None = None

    def mark_ready(self, model: str, backend: str, backend_choice: Mapping | None = None) -> None:
        self.model, self.backend, self.ready = model, backend, True
        self.backend_choice = dict(backend_choice) if backend_choice is not None else None

    def body(self) -> dict:
        if not self.ready:
            return {"status": "starting"}
        body = {"status": "ok", "model": self.model, "backend": self.backend}
        if self.backend_choice is not None:
            body.update(
                backend_reason=self.backend_choice.get("reason"),
                backend_automatic=self.backend_choice.get("automatic"),
                hardware=self.backend_choice.get("hardware"),
                backend_timings_ms=self.backend_choice.get("timings_ms", {}),
                backend_excluded=self.backend_choice.get("excluded", {}),
            )
        if self.live_sessions is not None:
            body["live_sessions"] = self.live_sessions()
        return body
