"""The Gradio Space: record or upload speech, get a probability for each emotion (UI + API).

    python app.py                          # bundled model (models/ser-multicorpus), http://127.0.0.1:7860
    python app.py --model runs/my-model    # or SER_MODEL=... ; a local folder or a hub id

The model is loaded and warmed up once, before the server starts; the handler only reads it.
``demo`` (what ``gradio app.py`` and Spaces tooling look up) is resolved lazily on first access
(PEP 562 module ``__getattr__``) from ``$SER_MODEL`` or the bundled model, so ``import app``
never loads a model and works before the bundled model exists. Tests call ``build_demo``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import soundfile
from transformers import HfArgumentParser

from ser.audio.loader import ACCEPTED_FORMATS, AudioError, load_audio
from ser.inference.adaptation import AdaptationUnsupportedError
from ser.inference.backends import BackendError
from ser.inference.hardware import limit_numpy_blas_threads
from ser.inference.predictor import (
    EmotionClassifier,
    ModelNotConfiguredError,
    Prediction,
)
from ser.inference.quality import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    Answer,
    QualityConfig,
    QualityReport,
    assess_quality,
    check_quality,
    decide,
    get_speech_detector,
)
from ser.inference.timeline import (
    TABLE_HEADERS,
    Timeline,
    TimelineConfig,
    timeline_figure,
    timeline_for_file,
    timeline_for_waveform,
    timeline_table,
)
from ser.serving.calibration import Calibration, CalibrationError
from ser.serving.guard import RequestGuard
from ser.serving.limits import (
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_UPLOAD_TTL_S,
    ServingConfig,
    ServingError,
    env_default,
)
from ser.serving.live import STREAM_EVERY_S, LiveConfig, LiveSession, LiveUpdate, calibration_line, live_step, strip_html
from ser.serving.middleware import create_serving, launch_kwargs
from ser.serving.monitoring import DEFAULT_DRIFT_WINDOW

logger = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = APP_DIR / "examples"
EXAMPLE_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")

#: Public endpoints: ``/gradio_api/call/predict`` and ``Client.predict(..., api_name="/predict")``; same for timeline.
API_NAME = "predict"
TIMELINE_API_NAME = "timeline"
#: ``predict`` calibrated to the caller's voice: (audio, calibration) -> (..., calibration); see README.
CALIBRATED_API_NAME = "predict_calibrated"
#: What the gr.Label shows instead of an emotion when the top probability is below the threshold.
UNCERTAIN_LABEL = "uncertain"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: Longer uploads are refused: the model only needs a few seconds of speech, and this bounds CPU per request.
DEFAULT_MAX_DURATION_S = 60.0
#: One inference at a time: torch already uses every core, so parallel requests would only slow each other.
DEFAULT_CONCURRENCY_LIMIT = 1
#: Requests waiting beyond this are refused ("queue full") rather than piling up.
DEFAULT_MAX_QUEUE_SIZE = 16
#: Live sessions streaming at once. Each holds one slot of its own queue ("live") while it records;
#: four fit two cores with room to spare (docs/serving.md, "Live mode"); a fifth waits in the queue.
LIVE_CONCURRENCY_LIMIT = 4
#: The stream's own time limit is only a safety net past the recording limit: Gradio re-submits a
#: stream at its time_limit rather than ending it, so the handler ends the recording itself.
LIVE_TIME_LIMIT_SLACK_S = 30
#: Greyed bars while the VAD hears no speech (passed to ``launch``: gradio 6 takes css there).
LIVE_CSS = "#live-bars.live-stale, .live-stale #live-bars { opacity: 0.45; filter: grayscale(1); transition: opacity 0.2s; }"


@dataclass
class AppArguments:
    model: str | None = field(
        default=None,
        metadata={"help": "Model folder or hub id. Default: $SER_MODEL, else the bundled models/ser-multicorpus."},
    )
    backend: str | None = field(
        default=None,
        metadata={"help": "Serving backend: auto, torch (fp32 reference), onnx, onnx-int8, bf16, cuda. Default: $SER_BACKEND, else auto: cuda when a GPU is present, otherwise the fastest CPU backend that agrees with torch, timed on the warm-up clip at load (docs/backends.md)."},
    )
    host: str = field(
        default_factory=lambda: os.environ.get("GRADIO_SERVER_NAME", DEFAULT_HOST),
        metadata={"help": f"Address to listen on (default: $GRADIO_SERVER_NAME, else {DEFAULT_HOST})."},
    )
    port: int = field(
        default_factory=lambda: int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
        metadata={"help": f"Port to listen on (default: $GRADIO_SERVER_PORT, else {DEFAULT_PORT})."},
    )
    share: bool = field(default=False, metadata={"help": "Also open a public *.gradio.live tunnel."})
    # Operating limits (docs/serving.md, "Operating the Space"): each also settable by the $SER_* variable named in its help.
    max_duration_s: float = field(
        default_factory=env_default("max_duration_s", DEFAULT_MAX_DURATION_S),
        metadata={"help": f"Refuse clips longer than this many seconds ($SER_MAX_DURATION_S; default {DEFAULT_MAX_DURATION_S:g})."},
    )
    live_max_duration_s: float | None = field(
        default=None,
        metadata={"help": "Live mode: a recording ends (and is scored as a whole) after this many seconds. Default: --max_duration_s."},
    )
    concurrency_limit: int = field(
        default_factory=env_default("concurrency_limit", DEFAULT_CONCURRENCY_LIMIT),
        metadata={"help": f"Predictions run at the same time ($SER_CONCURRENCY_LIMIT; default {DEFAULT_CONCURRENCY_LIMIT})."},
    )
    max_queue_size: int = field(
        default_factory=env_default("max_queue_size", DEFAULT_MAX_QUEUE_SIZE),
        metadata={"help": f"Requests allowed to wait; more are refused ($SER_MAX_QUEUE_SIZE; default {DEFAULT_MAX_QUEUE_SIZE})."},
    )
    max_upload_mb: float = field(
        default_factory=env_default("max_upload_mb", DEFAULT_MAX_UPLOAD_MB),
        metadata={"help": f"Largest upload in MB, refused while streaming in ($SER_MAX_UPLOAD_MB; default {DEFAULT_MAX_UPLOAD_MB:g})."},
    )
    request_timeout_s: float = field(
        default_factory=env_default("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S),
        metadata={"help": f"Answer with an error after this many seconds of work on one clip ($SER_REQUEST_TIMEOUT_S; default {DEFAULT_REQUEST_TIMEOUT_S:g})."},
    )
    upload_ttl_s: float = field(
        default_factory=env_default("upload_ttl_s", DEFAULT_UPLOAD_TTL_S),
        metadata={"help": f"Delete uploads never submitted after this many seconds ($SER_UPLOAD_TTL_S; default {DEFAULT_UPLOAD_TTL_S:g})."},
    )
    drift_window: int = field(
        default_factory=env_default("drift_window", DEFAULT_DRIFT_WINDOW),
        metadata={"help": f"Answers in the /metrics drift window ($SER_DRIFT_WINDOW; default {DEFAULT_DRIFT_WINDOW})."},
    )
    quality_gate: bool = field(
        default=True,
        metadata={"help": "Refuse clips that are silent, speechless (Silero VAD), clipped or hold too little speech."},
    )
    min_speech_s: float = field(
        default=QualityConfig.min_speech_s, metadata={"help": "Least speech (seconds, as found by the VAD) accepted."}
    )
    confidence_threshold: float = field(
        default=DEFAULT_CONFIDENCE_THRESHOLD,
        metadata={"help": "Answer 'uncertain' when the top probability is below this (0 disables)."},
    )
    timeline_adapt: bool = field(
        default=True,
        metadata={"help": "Timeline: standardise the segments with the recording's own statistics once it has enough segments (models with an embedding only)."},
    )


def load_classifier(model_name_or_path: str | None = None, backend: str | None = None) -> EmotionClassifier:
    """Load the model once and run one throw-away pass so the first user does not wait for it."""
    classifier = EmotionClassifier.from_pretrained(model_name_or_path, backend=backend)
    classifier.warmup()
    return classifier


def format_info(prediction: Prediction, decode_s: float, model_s: float) -> str:
    """The line under the bars: how long the clip is and how long the model took."""
    return f"Clip length **{prediction.duration_s:.2f} s** · model **{model_s * 1000:.0f} ms** (decoding {decode_s * 1000:.0f} ms)"


def format_uncertainty(answer: Answer) -> str:
    return (
        f"**Uncertain:** the most likely class, {answer.label}, has {answer.confidence:.0%}, below the "
        f"{answer.confidence_threshold:.0%} this app needs to name an emotion. The bars show how the rest compare."
    )


def answer_clip(
    classifier: EmotionClassifier,
    audio_path: str | None,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    quality: QualityConfig | None = None,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
) -> tuple[Answer, QualityReport | None, str]:
    """The request handler: audio file -> (answer, quality report or None when ungated, info markdown).

    ``quality`` runs the gate (ser.inference.quality) between decoding and the model. Audio problems
    (``AudioError``, messages written for users, including the gate's) become ``gr.Error`` here,
    at the UI edge; the server keeps serving.
    """
    answer, report, info, _ = answer_clip_calibrated(classifier, audio_path, None, max_duration_s, quality, confidence_threshold)
    return answer, report, info


def answer_clip_calibrated(
    classifier: EmotionClassifier,
    audio_path: str | None,
    calibration: Calibration | None,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    quality: QualityConfig | None = None,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
) -> tuple[Answer, QualityReport | None, str, Calibration | None]:
    """:func:`answer_clip`, plus calibration to the visitor's voice: with a ``calibration`` (``None``:
    off) the clip is added to it (only once it passed the gate) and classified with it once it holds
    enough clips. Returns the updated calibration too (``None`` when off)."""
    if not audio_path:
        raise gr.Error(f"No audio received. Record with the microphone or upload a file ({ACCEPTED_FORMATS}).")
    started = time.perf_counter()
    report = None
    try:
        waveform = load_audio(audio_path, classifier.sample_rate, max_duration_s)
        decoded = time.perf_counter()
        if quality is not None:
            report = check_quality(waveform, classifier.sample_rate, quality)
        checked = time.perf_counter()
        if calibration is None:
            prediction = classifier.classify_waveform(waveform)
        else:
            prediction, calibration = calibration.classify(classifier, waveform)
    except AudioError as error:
        logger.info("Rejected %s: %s", Path(audio_path).name, error)
        raise gr.Error(str(error)) from error
    except AdaptationUnsupportedError as error:
        raise gr.Error(f"Calibration is not available: {error}") from error
    model_s = time.perf_counter() - checked
    answer = decide(prediction.probabilities, confidence_threshold)
    logger.info("%s: %s (%.2f%s) in %.0f ms", Path(audio_path).name, answer.label, answer.confidence,
                ", uncertain" if answer.uncertain else "", model_s * 1000)
    info = format_info(prediction, decoded - started, model_s)
    if report is not None:
        info += f" · quality check {(checked - decoded) * 1000:.0f} ms ({report.speech_s:.1f} s of speech)"
    if calibration is not None:
        info += "\n\n" + calibration.describe()
    if answer.uncertain:
        info += "\n\n" + format_uncertainty(answer)
    return answer, report, info, calibration


def classify_clip(
    classifier: EmotionClassifier,
    audio_path: str | None,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    quality: QualityConfig | None = None,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
) -> tuple[dict[str, float], str]:
    """:func:`answer_clip` reduced to ({label: probability} for every label, info markdown)."""
    answer, _, info = answer_clip(classifier, audio_path, max_duration_s, quality, confidence_threshold)
    return answer.probabilities, info


class LabelFiles:
    """gr.Label names its headline after the top class unless given a JSON file (its documented
    way to set ``label``); the few files needed in flight are kept, older ones deleted."""

    def __init__(self, keep: int = 64):
        self._directory = Path(tempfile.mkdtemp(prefix="ser-label-"))
        self._paths: collections.deque[Path] = collections.deque()
        self._keep = keep
        self._lock = threading.Lock()
        self._count = 0

    def write(self, value: dict) -> str:
        with self._lock:
            self._count += 1
            path = self._directory / f"{self._count}.json"
            path.write_text(json.dumps(value))
            self._paths.append(path)
            while len(self._paths) > self._keep:
                self._paths.popleft().unlink(missing_ok=True)
        return str(path)


def label_value(answer: Answer, label_files: LabelFiles) -> dict[str, float] | str:
    """What the gr.Label gets: the probabilities (headline = top class), or, when uncertain, the
    same bars under the headline ``uncertain`` (via one of the demo's ``label_files``)."""
    if not answer.uncertain:
        return answer.probabilities
    ranked = sorted(answer.probabilities.items(), key=lambda item: item[1], reverse=True)
    return label_files.write(
        {"label": UNCERTAIN_LABEL, "confidences": [{"label": label, "confidence": value} for label, value in ranked]}
    )


def api_payload(answer: Answer, report: QualityReport | None) -> dict:
    """The /predict JSON output: ``label`` (top class, also when uncertain), ``confidence``,
    ``uncertain``, ``confidence_threshold``, ``probabilities`` and ``quality`` (the gate's
    measurements, or ``None`` when the gate is off)."""
    return {**answer.to_dict(), "quality": None if report is None else report.to_dict()}


def timeline_summary(timeline: Timeline) -> str:
    uncertain = sum(segment.uncertain for segment in timeline.segments)
    speech_s = timeline.quality.speech_s or 0.0
    return (
        f"Recording **{timeline.duration_s / 60:.1f} min** · speech **{speech_s / 60:.1f} min** in "
        f"**{len(timeline.segments)}** segments · **{uncertain}** uncertain (top probability below "
        f"{timeline.confidence_threshold:.0%})" + (f" · {timeline.adaptation_note}" if timeline.adaptation_note else "")
    )


def build_timeline_records(
    classifier: EmotionClassifier,
    audio_path: str | None,
    config: TimelineConfig,
    progress=None,
) -> Timeline:
    """Long recording -> timeline; audio problems become ``gr.Error`` (the UI edge)."""
    if not audio_path:
        raise gr.Error(f"No audio received. Upload a recording ({ACCEPTED_FORMATS}).")
    started = time.perf_counter()
    try:
        timeline = timeline_for_file(classifier, audio_path, config, progress=progress)
    except AudioError as error:
        logger.info("Rejected %s for the timeline: %s", Path(audio_path).name, error)
        raise gr.Error(str(error)) from error
    logger.info("%s: timeline of %d segments in %.1f s", Path(audio_path).name, len(timeline.segments), time.perf_counter() - started)
    return timeline


def model_display_name(name: str) -> str:
    """A hub id as is; a local folder by its own name (the page should not show server paths)."""
    return Path(name).name if Path(name).is_dir() else name


def example_paths() -> list[str]:
    """The redistributable clips in examples/ (generated by examples/make_examples.py)."""
    return sorted(str(path) for path in EXAMPLES_DIR.iterdir() if path.suffix.lower() in EXAMPLE_SUFFIXES)


def live_status(update: LiveUpdate, config: LiveConfig) -> str:
    """The live status line: what the newest update did, the recording's length, the server's time."""
    timing = f"{update.seconds:.1f} of {config.max_duration_s:g} s · update {update.server_ms:.0f} ms"
    if update.kind == "limit":
        return f"**Time limit reached** ({config.max_duration_s:g} s): the recording has ended; scoring the whole recording…"
    if update.kind == "listening":
        return f"**listening…** (no speech in the newest half second; the bars keep the last answer, greyed) · {timing}"
    answer = update.answer
    headline = f"{UNCERTAIN_LABEL} (most likely {answer.label}, {answer.confidence:.0%})" if answer.uncertain else f"{answer.label} ({answer.confidence:.0%})"
    return f"**Live: {headline}** · {'calibrated' if update.calibrated else 'uncalibrated'} · {timing} (model {update.model_ms:.0f} ms)"


def build_live_mode(
    classifier: EmotionClassifier,
    guard: RequestGuard,
    label_files: LabelFiles,
    config: LiveConfig,
    quality: QualityConfig | None,
    timeline_config: TimelineConfig,
) -> None:
    """The live mode's components and events, inside the caller's ``gr.Blocks`` (see ser/serving/live.py)."""
    detector = get_speech_detector()
    can_calibrate = classifier.supports_adaptation
    labels = list(classifier.labels)

    def new_session() -> LiveSession:
        return LiveSession(config)

    def live_update(slice_path: str | None, session: LiveSession | None, calibrate: bool):
        # One slice of the microphone stream (a Gradio temp file, deleted here once read).
        session = session or new_session()
        if not slice_path:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), session, gr.skip()
        with guard.releasing(slice_path):
            try:
                samples, rate = soundfile.read(slice_path, dtype="float32", always_2d=False)
                update = live_step(classifier, detector, session, samples, rate, bool(calibrate))
            except (soundfile.LibsndfileError, RuntimeError, AudioError) as error:
                logger.info("Live slice refused: %s", error)
                return gr.skip(), f"This audio slice could not be used ({error}).", gr.skip(), gr.skip(), session, gr.skip()
        if update.kind == "ignored":
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), session, gr.skip()
        status = live_status(update, config)
        calibration = calibration_line(session, bool(calibrate), can_calibrate)
        if update.kind == "limit":
            logger.info("Live recording reached its %g s limit", config.max_duration_s)
            # Bumping the hidden number runs its js, which presses the microphone's Stop: the only way
            # to end a browser recording from the server (returning recording=False does not).
            return gr.skip(), status, strip_html(session, labels), calibration, session, time.time()
        if update.kind == "listening":
            return gr.Label(elem_classes=["live-stale"]), status, gr.skip(), calibration, session, gr.skip()
        bars = gr.Label(value=label_value(update.answer, label_files), elem_classes=[])
        return bars, status, strip_html(session, labels), calibration, session, gr.skip()

    def live_stop(session: LiveSession | None, calibrate: bool):
        # The whole recording as one clip (the stream handler only ever saw it slice by slice).
        if session is None or session.length == 0:
            return "Nothing was recorded.", None, session
        with session.lock:
            waveform = session.take_recording()
            calibration = session.calibration
        seconds = len(waveform) / classifier.sample_rate
        if quality is not None:
            report = assess_quality(waveform, classifier.sample_rate, dataclasses.replace(quality, max_duration_s=None))
            if not report.ok:
                return f"**Whole recording ({seconds:.1f} s):** not scored. {report.message}", None, session
        statistics = calibration.statistics if calibrate and can_calibrate and calibration.calibrated else None
        answer = decide(classifier.classify_waveform(waveform, statistics).probabilities, config.confidence_threshold)
        headline = (
            f"**{UNCERTAIN_LABEL}** (most likely {answer.label}, {answer.confidence:.0%})"
            if answer.uncertain
            else f"**{answer.label}** ({answer.confidence:.0%})"
        )
        text = f"**Whole recording ({seconds:.1f} s):** {headline}, {'calibrated' if statistics is not None else 'uncalibrated'}."
        figure = None
        try:
            timeline = timeline_for_waveform(classifier, waveform, classifier.sample_rate, dataclasses.replace(timeline_config, refuse_unusable=False))
            figure = timeline_figure(timeline, labels)
            text += "\n\n" + timeline_summary(timeline)
        except AudioError as error:
            text += f"\n\nNo timeline: {error}"
        logger.info("Live recording of %.1f s: %s (%.2f%s)", seconds, answer.label, answer.confidence, ", uncertain" if answer.uncertain else "")
        return text, figure, session

    def reset(session: LiveSession | None, calibrate: bool):
        session = session or new_session()
        with session.lock:
            session.reset_calibration()
        return calibration_line(session, calibrate, can_calibrate), session

    def switch(session: LiveSession | None, calibrate: bool):
        return calibration_line(session or new_session(), calibrate, can_calibrate)

    with gr.Accordion("Live mode: the bars move while you speak", open=False, elem_id="live-mode"):
        gr.Markdown(
            f"Press **Record** and speak: every {STREAM_EVERY_S:g} s the newest {config.window_s:g} s are classified and the "
            "bars follow you (smoothed over about a second). While the detector hears no speech the page says "
            "**listening…** and the bars stay greyed rather than guessing. **Stop** scores the whole recording "
            f"(at most {config.max_duration_s:g} s) as one clip and shows its timeline. "
            + (
                "With calibration on, windows of your speech supply the statistics the model standardises with, as "
                "\"Calibrate to my voice\" does for clips: statistics only, never audio, in this tab's session; "
                "calibrated from the count shown on. Your browser's own echo cancellation, noise suppression and "
                "gain control shape the sound the model hears."
                if can_calibrate
                else "This model cannot be calibrated to a voice, so live answers are uncalibrated."
            )
        )
        with gr.Row():
            with gr.Column():
                mic = gr.Audio(sources=["microphone"], streaming=True, type="filepath", label="Live microphone", elem_id="live-mic")
                calibrate = gr.Checkbox(label="Calibrate live answers to my voice", value=can_calibrate, interactive=can_calibrate, elem_id="live-calibrate")
                calibration_info = gr.Markdown(calibration_line(new_session(), can_calibrate, can_calibrate), elem_id="live-calibration")
                reset_button = gr.Button("Reset live calibration", interactive=can_calibrate, elem_id="live-reset")
            with gr.Column():
                bars = gr.Label(num_top_classes=len(labels), label="Emotion (live)", elem_id="live-bars")
                status = gr.Markdown("Press **Record** to start.", elem_id="live-status")
                strip = gr.HTML(elem_id="live-strip")
        result = gr.Markdown(elem_id="live-result")
        plot = gr.Plot(label="Whole recording: emotion timeline")
        session_state = gr.State(None)
        stop_signal = gr.Number(value=None, visible=False)
    stop_signal.change(None, js="() => { document.querySelector('#live-mic button.stop-button')?.click(); }")
    mic.stream(
        live_update,
        inputs=[mic, session_state, calibrate],
        outputs=[bars, status, strip, calibration_info, session_state, stop_signal],
        stream_every=STREAM_EVERY_S,
        time_limit=int(config.max_duration_s + LIVE_TIME_LIMIT_SLACK_S),
        concurrency_limit=LIVE_CONCURRENCY_LIMIT,
        concurrency_id="live",
        show_progress="hidden",
        api_visibility="private",
    )
    mic.stop_recording(live_stop, inputs=[session_state, calibrate], outputs=[result, plot, session_state], api_visibility="private")
    reset_button.click(reset, inputs=[session_state, calibrate], outputs=[calibration_info, session_state], api_visibility="private")
    calibrate.change(switch, inputs=[session_state, calibrate], outputs=calibration_info, api_visibility="private")


def build_demo(
    classifier: EmotionClassifier,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    concurrency_limit: int = DEFAULT_CONCURRENCY_LIMIT,
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
    quality: QualityConfig | None = QualityConfig(),
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    serving: ServingConfig | None = None,
    timeline_adapt: bool = True,
    live_max_duration_s: float | None = None,
) -> gr.Blocks:
    """The UI and the ``/predict``, ``/predict_calibrated`` and ``/timeline`` APIs around an already loaded classifier.

    ``timeline_adapt``: the timeline adapts to the recording (``TimelineConfig.adapt``).

    ``serving``: upload / timeout / drift settings; the demo's ``serving_state`` (metrics, uploads,
    readiness) feeds the middleware that :func:`ser.serving.middleware.launch_kwargs` adds at launch.

    ``quality=None`` turns the quality gate off (single clips and the timeline's recording check).

    ``live_max_duration_s``: live mode's recording limit (default ``max_duration_s``).
    """
    if quality is not None:
        quality = dataclasses.replace(quality, max_duration_s=max_duration_s)
    get_speech_detector()  # load the VAD now, not on the first request
    timeline_config = TimelineConfig(
        confidence_threshold=confidence_threshold,
        gate=dataclasses.replace(quality or QualityConfig(), max_duration_s=None),
        refuse_unusable=quality is not None,
        adapt=timeline_adapt,
    )

    serving_state, guard = create_serving(
        classifier, serving or ServingConfig(), confidence_threshold, concurrency_limit, user_errors=(gr.Error,),
        example_files=example_paths(),
    )

    label_files = LabelFiles()

    def answer_request(audio: str | None) -> tuple[dict[str, float] | str, str, dict]:
        answer, report, info = answer_clip(classifier, audio, max_duration_s, quality, confidence_threshold)
        return label_value(answer, label_files), info, api_payload(answer, report)

    def predict(audio: str | None) -> tuple[dict[str, float] | str, str, dict]:
        """Classify a speech clip: the gr.Label value (every class's probability; headline "uncertain" below the
        confidence threshold), the clip length / model time, and the answer as JSON (label, confidence, uncertain,
        confidence_threshold, probabilities, quality)."""
        # The guard adds the request timeout and metrics, and deletes the upload once answered.
        try:
            return guard.run(audio, lambda: answer_request(audio), lambda result: result[2]["probabilities"])
        except ServingError as error:
            raise gr.Error(str(error)) from error

    can_calibrate = classifier.supports_adaptation

    def calibrated_request(audio: str | None, calibration: Calibration) -> tuple[dict[str, float] | str, str, dict, Calibration]:
        answer, report, info, updated = answer_clip_calibrated(classifier, audio, calibration, max_duration_s, quality, confidence_threshold)
        return label_value(answer, label_files), info, {**api_payload(answer, report), "calibration": updated.summary()}, updated

    def run_calibrated(audio: str | None, make_calibration: Callable[[], Calibration]) -> tuple[dict[str, float] | str, str, dict, Calibration]:
        # ``make_calibration`` runs inside the guard, so a refused calibration still releases the upload.
        try:
            return guard.run(audio, lambda: calibrated_request(audio, make_calibration()), lambda result: result[2]["probabilities"])
        except ServingError as error:
            raise gr.Error(str(error)) from error

    def predict_calibrated(audio: str | None, calibration: dict | None) -> tuple[dict[str, float] | str, str, dict, dict | None]:
        """Classify a speech clip calibrated to the caller's voice. Send the calibration returned by your previous
        call (null to start): the clip is added to it, and once it holds enough clips the answer is standardised
        with its statistics instead of the training set's. Returns /predict's three outputs (the JSON with a
        'calibration' field: calibrated, clips, min_clips, capacity) and the updated calibration (statistics only)."""
        def parsed() -> Calibration:
            if not can_calibrate:
                return Calibration()  # classifying with it raises the model's own explanation
            try:
                return Calibration.from_dict(calibration, classifier.embedding_shape)
            except CalibrationError as error:
                raise gr.Error(str(error)) from error

        label_out, info_out, payload, updated = run_calibrated(audio, parsed)
        return label_out, info_out, payload, updated.to_dict()

    def predict_in_page(audio: str | None, calibrate: bool = False, calibration: Calibration | None = None):
        # The page's Submit: calibrated only when the visitor opted in; ``calibration`` is this browser
        # session's gr.State (statistics only), returned updated so Gradio keeps it for the next clip.
        if not calibrate:
            return (*predict(audio), calibration, calibration_status(calibration, calibrate))
        label_out, info_out, payload, updated = run_calibrated(audio, lambda: calibration or Calibration())
        return label_out, info_out, payload, updated, calibration_status(updated, calibrate)

    def calibration_status(calibration: Calibration | None, calibrate: bool) -> str:
        if not can_calibrate:
            return f"Not available with this model ({model_display_name(classifier.name)}): it has no utterance embedding whose statistics can be swapped."
        state = (calibration or Calibration()).describe()
        return state if calibrate else f"Off: answers use the training statistics. ({state})"

    def timeline(audio: str | None, progress=gr.Progress()) -> list[dict]:
        """Emotion timeline of a long recording: [{start_s, end_s, label, confidence, uncertain, probabilities}] per speech segment."""
        with guard.releasing(audio):
            result = build_timeline_records(
                classifier, audio, timeline_config, progress=lambda fraction, text: progress(fraction, desc=text)
            )
        return result.records()

    def show_timeline(audio: str | None, progress=gr.Progress()):
        # The page's own event: plot, table, summary and the same JSON the API returns, from one pass.
        with guard.releasing(audio):
            result = build_timeline_records(
                classifier, audio, timeline_config, progress=lambda fraction, text: progress(fraction, desc=text)
            )
        return timeline_figure(result, classifier.labels), timeline_table(result), timeline_summary(result), result.records()

    labels = ", ".join(classifier.labels)
    with gr.Blocks(title="Speech emotion recognition") as demo:
        gr.Markdown(
            "# Speech emotion recognition\n"
            f"Record or upload a short clip of speech and press **Submit** to see how likely each emotion is ({labels}). "
            f"Accepted: {ACCEPTED_FORMATS}; up to {max_duration_s:g} s. "
            "The model was trained on acted English, German and Polish speech: read the bars as an estimate, not a verdict."
        )
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Speech")
                with gr.Row():
                    clear = gr.ClearButton(value="Clear")
                    submit = gr.Button("Submit", variant="primary")
                with gr.Accordion("Calibrate to my voice", open=False):
                    gr.Markdown(
                        "Opt in and your recent clips in this browser tab (the last "
                        f"{Calibration().capacity}) supply the statistics the model standardises its features with, instead of "
                        "its training set's, so it adapts to your voice, language and microphone. From "
                        f"{Calibration().min_clips} clips on the answers are calibrated; before that they are the uncalibrated "
                        "ones. Only statistics are kept (a mean and a spread per feature), never your audio, in this tab's "
                        "session in the server's memory: never written to disk, never shared with another visitor, dropped "
                        "when the session ends (Gradio keeps a closed tab's session up to an hour); reloading the page or "
                        "**Reset calibration** forgets them. Example clips are never added."
                    )
                    calibrate = gr.Checkbox(label="Calibrate to my voice", value=False, interactive=can_calibrate)
                    calibration_info = gr.Markdown(calibration_status(None, False))
                    reset_calibration = gr.Button("Reset calibration", interactive=can_calibrate)
            with gr.Column():
                label = gr.Label(num_top_classes=len(classifier.labels), label="Emotion")
                info = gr.Markdown(label="Details")
                with gr.Accordion("Answer as JSON (what the API returns)", open=False):
                    answer_json = gr.JSON(label="Answer")
        clear.add([audio, label, info, answer_json])
        # The public endpoints first (an event without api_name is named after its function, and an
        # earlier one would take "predict"), triggered by hidden buttons; the page runs the handlers below.
        predict_api_trigger = gr.Button(visible=False)
        predict_api_trigger.click(predict, inputs=audio, outputs=[label, info, answer_json], api_name=API_NAME)
        calibration_in, calibration_out = gr.JSON(visible=False), gr.JSON(visible=False)
        calibrated_api_trigger = gr.Button(visible=False)
        calibrated_api_trigger.click(
            predict_calibrated, inputs=[audio, calibration_in], outputs=[label, info, answer_json, calibration_out], api_name=CALIBRATED_API_NAME
        )
        if can_calibrate:
            # Per browser session, on the server's side of that session only (a gr.State makes the page keep
            # a heartbeat connection open; live mode's session state already needs one on every page).
            calibration_state = gr.State(None)
            submit.click(
                predict_in_page,
                inputs=[audio, calibrate, calibration_state],
                outputs=[label, info, answer_json, calibration_state, calibration_info],
                api_visibility="private",
            )
            reset_calibration.click(
                lambda on: (None, calibration_status(None, on)), inputs=calibrate, outputs=[calibration_state, calibration_info],
                api_visibility="private",
            )
            calibrate.change(calibration_status, inputs=[calibration_state, calibrate], outputs=calibration_info, api_visibility="private")
        else:
            submit.click(predict, inputs=audio, outputs=[label, info, answer_json], api_visibility="private")
        examples = example_paths()
        if examples:
            gr.Examples(
                examples=examples,
                inputs=audio,
                outputs=[label, info, answer_json],
                fn=predict,
                # Cached outputs would freeze the timing line, and caching at start slows boot.
                cache_examples=False,
                run_on_click=True,
                api_visibility="private",
                label="Examples (synthetic speech, espeak-ng)",
            )
        live_config = LiveConfig(
            max_duration_s=float(live_max_duration_s or max_duration_s or DEFAULT_MAX_DURATION_S),
            confidence_threshold=confidence_threshold,
        )
        build_live_mode(classifier, guard, label_files, live_config, quality, timeline_config)
        with gr.Accordion("Long recording: emotion timeline", open=False):
            gr.Markdown(
                "Upload a conversation or a long recording. Speech is found with a voice activity detector, cut into "
                f"segments of at most {timeline_config.max_segment_s:g} s, and each segment is classified. "
                f"Hatched bars are uncertain (top probability below {confidence_threshold:.0%})."
                + (
                    f" A recording is one voice and one room: from {timeline_config.min_adaptation_segments} segments on, "
                    "they are standardised with the recording's own statistics (the summary says whether)."
                    if timeline_config.adapt and classifier.supports_adaptation
                    else ""
                )
            )
            long_audio = gr.Audio(sources=["upload"], type="filepath", label="Recording")
            timeline_button = gr.Button("Build timeline", variant="primary")
            timeline_info = gr.Markdown()
            timeline_plot = gr.Plot(label="Emotion timeline")
            timeline_rows = gr.Dataframe(headers=TABLE_HEADERS, label="Segments", interactive=False)
            with gr.Accordion("Segments as JSON (what the API returns)", open=False):
                timeline_json = gr.JSON(label="Segments")
            # API-only trigger for /timeline (never shown); the page runs show_timeline.
            timeline_api_trigger = gr.Button(visible=False)
        timeline_button.click(
            show_timeline,
            inputs=long_audio,
            outputs=[timeline_plot, timeline_rows, timeline_info, timeline_json],
            api_visibility="private",
        )
        timeline_api_trigger.click(timeline, inputs=long_audio, outputs=timeline_json, api_name=TIMELINE_API_NAME)
        gr.Markdown(f"Model: `{model_display_name(classifier.name)}`")
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    serving_state.blocks = demo
    demo.serving_state = serving_state
    return demo


@functools.cache
def _configured_demo() -> gr.Blocks:
    return build_demo(load_classifier())


def __getattr__(name: str):
    # ``app.demo``: built on first access from $SER_MODEL or the bundled model (raises
    # ModelNotConfiguredError when neither exists), so importing this module stays cheap.
    if name == "demo":
        return _configured_demo()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # gradio's own HTTP client logs every health-check request at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    (args,) = HfArgumentParser(AppArguments).parse_args_into_dataclasses()
    # Before any numpy work: idle OpenBLAS threads spinning next to the model doubled its time here.
    limit_numpy_blas_threads(1)
    try:
        classifier = load_classifier(args.model, args.backend)
    except (ModelNotConfiguredError, BackendError) as error:
        raise SystemExit(str(error)) from None
    except OSError as error:
        # transformers' "not a local folder or hub id" messages run to several lines; keep the first.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SystemExit(f"Cannot load model {args.model or os.environ.get('SER_MODEL')!r}: {first_line}") from None
    quality = QualityConfig(min_speech_s=args.min_speech_s) if args.quality_gate else None
    demo = build_demo(
        classifier, args.max_duration_s, args.concurrency_limit, args.max_queue_size, quality, args.confidence_threshold,
        serving=ServingConfig(args.max_upload_mb, args.request_timeout_s, args.upload_ttl_s, args.drift_window),
        timeline_adapt=args.timeline_adapt,
        live_max_duration_s=args.live_max_duration_s,
    )
    # launch_kwargs: the upload limit plus the middleware behind /metrics, /health, payload checks, upload deletion.
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=LIVE_CSS, **launch_kwargs(demo.serving_state))


if __name__ == "__main__":
    main()
