"""The live-mode panel: the microphone stream, the bars that follow the voice, the rolling strip,
live calibration, and Stop's whole-recording answer (the session logic is :mod:`ser.serving.live`)."""

from __future__ import annotations

import dataclasses
import logging
import time

import gradio as gr
import numpy as np
import soundfile

from ser.audio.loader import AudioError
from ser.core.statistics import EmbeddingStatistics
from ser.inference.hardware import release_free_memory
from ser.inference.predictor import EmotionClassifier
from ser.inference.quality import QualityConfig, assess_quality, decide, get_speech_detector
from ser.inference.timeline import TimelineConfig, timeline_figure, timeline_for_waveform
from ser.serving.display import UNCERTAIN_LABEL, LabelFiles, label_value
from ser.serving.guard import RequestGuard
from ser.serving.limits import ServingError
from ser.serving.live import (
    LIVE_CONCURRENCY_LIMIT,
    STREAM_EVERY_S,
    LiveConfig,
    LiveSession,
    LiveSessions,
    LiveUpdate,
    calibration_line,
    live_step,
    strip_html,
)
from ser.serving.monitoring import AppMetrics
from ser.serving.timeline_panel import timeline_summary
from ser.serving.ui_errors import user_error

logger = logging.getLogger(__name__)

#: The stream's own time limit is only a safety net past the recording limit: Gradio re-submits a
#: stream at its time_limit rather than ending it, so the handler ends the recording itself.
LIVE_TIME_LIMIT_SLACK_S = 30
#: Greyed bars while the VAD hears no speech.
LIVE_CSS = "#live-bars.live-stale, .live-stale #live-bars { opacity: 0.45; filter: grayscale(1); transition: opacity 0.2s; }"


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


def whole_recording(
    classifier: EmotionClassifier,
    waveform: np.ndarray,
    statistics: EmbeddingStatistics | None,
    quality: QualityConfig | None,
    confidence_threshold: float,
    timeline_config: TimelineConfig,
):
    """Stop's answer: the whole recording as one clip (markdown) and its timeline (a figure, or ``None``).
    ``statistics``: the live calibration's, when it is on and ready."""
    seconds = len(waveform) / classifier.sample_rate
    if quality is not None:
        report = assess_quality(waveform, classifier.sample_rate, dataclasses.replace(quality, max_duration_s=None))
        if not report.ok:
            logger.info("Live recording of %.1f s not scored: %s", seconds, report.message)
            return f"**Whole recording ({seconds:.1f} s):** not scored. {report.message}", None
    answer = decide(classifier.classify_waveform(waveform, statistics).probabilities, confidence_threshold)
    headline = (
        f"**{UNCERTAIN_LABEL}** (most likely {answer.label}, {answer.confidence:.0%})"
        if answer.uncertain
        else f"**{answer.label}** ({answer.confidence:.0%})"
    )
    text = f"**Whole recording ({seconds:.1f} s):** {headline}, {'calibrated' if statistics is not None else 'uncalibrated'}."
    figure = None
    try:
        timeline = timeline_for_waveform(classifier, waveform, classifier.sample_rate, dataclasses.replace(timeline_config, refuse_unusable=False))
        figure = timeline_figure(timeline, classifier.labels)
        text += "\n\n" + timeline_summary(timeline)
    except AudioError as error:
        text += f"\n\nNo timeline: {error}"
    logger.info("Live recording of %.1f s: %s (%.2f%s)", seconds, answer.label, answer.confidence, ", uncertain" if answer.uncertain else "")
    return text, figure


class LiveHandlers:
    """Live mode's event handlers. Each browser session's :class:`LiveSession` lives in ``sessions``,
    found by Gradio's session hash, so that :meth:`closed` (the page's unload: tab closed or
    connection lost) can free it; every path that ends a recording frees its buffer."""

    def __init__(
        self,
        classifier: EmotionClassifier,
        guard: RequestGuard,
        metrics: AppMetrics,
        sessions: LiveSessions,
        label_files: LabelFiles,
        quality: QualityConfig | None,
        timeline_config: TimelineConfig,
    ):
        self.classifier = classifier
        self.guard = guard
        self.metrics = metrics
        self.sessions = sessions
        self.config = sessions.config
        self.label_files = label_files
        self.quality = quality
        self.timeline_config = timeline_config
        self.detector = get_speech_detector()
        self.can_calibrate = classifier.supports_adaptation
        self.labels = list(classifier.labels)

    def _session(self, request: gr.Request | None) -> LiveSession:
        key = getattr(request, "session_hash", None)
        if not key:
            raise user_error("Live mode needs a browser session (open the page and press Record).")
        return self.sessions.get(key)

    def update(self, slice_path: str | None, calibrate: bool, request: gr.Request):
        """One slice of the microphone stream (a Gradio temp file, deleted here once read)."""
        skip = gr.skip()
        session = self._session(request)
        if not slice_path:
            return skip, skip, skip, skip, skip
        try:
            with self.guard.handling(slice_path, owner=request.session_hash):
                try:
                    samples, rate = soundfile.read(slice_path, dtype="float32", always_2d=False)
                    update = live_step(self.classifier, self.detector, session, samples, rate, bool(calibrate))
                except (soundfile.LibsndfileError, RuntimeError, AudioError) as error:
                    logger.info("Live slice refused: %s", error)
                    self.metrics.observe_live_update("refused", 0.0)
                    return skip, f"This audio slice could not be used ({error}).", skip, skip, skip
        except ServingError as error:
            raise user_error(str(error)) from error
        if update.kind == "ignored":
            return skip, skip, skip, skip, skip
        self.metrics.observe_live_update(update.kind, update.server_ms / 1000)
        status = live_status(update, self.config)
        calibration = calibration_line(session, bool(calibrate), self.can_calibrate, self.classifier.labels)
        if update.kind == "limit":
            logger.info("Live recording reached its %g s limit", self.config.max_duration_s)
            # Bumping the hidden number runs its js, which presses the microphone's Stop: the only way
            # to end a browser recording from the server (returning recording=False does not).
            return skip, status, strip_html(session, self.labels), calibration, time.time()
        if update.kind == "listening":
            return gr.Label(elem_classes=["live-stale"]), status, skip, calibration, skip
        bars = gr.Label(value=label_value(update.answer, self.label_files), elem_classes=[])
        return bars, status, strip_html(session, self.labels), calibration, skip

    def stop(self, calibrate: bool, request: gr.Request):
        """The whole recording as one clip (the stream handler only ever saw it slice by slice). The
        buffer is freed before scoring, so a Stop that fails frees it too."""
        session = self._session(request)
        # Slices Gradio replaced by newer ones before the handler read them; a new recording's stay.
        self.guard.uploads.release_claims(request.session_hash, claimed_before=time.monotonic())
        with session.lock:
            waveform = session.take_recording()
            calibration = session.calibration
        if len(waveform) == 0:
            return "Nothing was recorded.", None
        statistics = calibration.standardisation() if calibrate and self.can_calibrate else None
        try:
            with self.guard.handling(None):
                answer = whole_recording(
                    self.classifier, waveform, statistics, self.quality, self.config.confidence_threshold, self.timeline_config
                )
        except ServingError as error:
            self.metrics.observe_live_end("stop_failed")
            raise user_error(str(error)) from error
        finally:
            del waveform
            release_free_memory()  # the recording and the whole-recording pass's buffers, back to the system
        self.metrics.observe_live_end("stop")
        return answer

    def closed(self, request: gr.Request) -> None:
        """The page went away (tab closed, reloaded, connection lost): free its session."""
        key = getattr(request, "session_hash", None)
        if key:
            self.guard.uploads.release_claims(key)
        if key and self.sessions.close(key):
            self.metrics.observe_live_end("closed")
            release_free_memory()
            logger.info("Live session closed with its page; freed")

    def reset(self, calibrate: bool, request: gr.Request) -> str:
        session = self._session(request)
        with session.lock:
            session.reset_calibration()
        return calibration_line(session, calibrate, self.can_calibrate, self.classifier.labels)

    def switch(self, calibrate: bool, request: gr.Request) -> str:
        return calibration_line(self._session(request), calibrate, self.can_calibrate, self.classifier.labels)


def build_live_mode(handlers: LiveHandlers) -> None:
    """The live mode's components and events, inside the caller's ``gr.Blocks`` (see ser/serving/live.py);
    ``handlers.closed`` is for the page's unload (``ser.serving.page_sessions``)."""
    config, can_calibrate = handlers.config, handlers.can_calibrate
    with gr.Accordion("Live mode: the bars move while you speak", open=False, elem_id="live-mode"):
        # Here rather than in launch(css=...), so that `gradio app.py` (reload mode) greys the bars too.
        gr.HTML(f"<style>{LIVE_CSS}</style>", padding=False, elem_id="live-css")
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
                calibration_info = gr.Markdown(calibration_line(LiveSession(config), can_calibrate, can_calibrate), elem_id="live-calibration")
                reset_button = gr.Button("Reset live calibration", interactive=can_calibrate, elem_id="live-reset")
            with gr.Column():
                bars = gr.Label(num_top_classes=len(handlers.labels), label="Emotion (live)", elem_id="live-bars")
                status = gr.Markdown("Press **Record** to start.", elem_id="live-status")
                strip = gr.HTML(elem_id="live-strip")
        result = gr.Markdown(elem_id="live-result")
        plot = gr.Plot(label="Whole recording: emotion timeline")
        stop_signal = gr.Number(value=None, visible=False)
    stop_signal.change(None, js="() => { document.querySelector('#live-mic button.stop-button')?.click(); }")
    mic.stream(
        handlers.update,
        inputs=[mic, calibrate],
        outputs=[bars, status, strip, calibration_info, stop_signal],
        stream_every=STREAM_EVERY_S,
        time_limit=int(config.max_duration_s + LIVE_TIME_LIMIT_SLACK_S),
        concurrency_limit=LIVE_CONCURRENCY_LIMIT,
        concurrency_id="live",
        show_progress="hidden",
        api_visibility="private",
    )
    mic.stop_recording(handlers.stop, inputs=calibrate, outputs=[result, plot], api_visibility="private")
    reset_button.click(handlers.reset, inputs=calibrate, outputs=calibration_info, api_visibility="private")
    calibrate.change(handlers.switch, inputs=calibrate, outputs=calibration_info, api_visibility="private")

