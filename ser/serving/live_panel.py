"""The live-mode panel: the microphone stream, the bars that follow the voice, the rolling strip,
live calibration, and Stop's whole-recording answer (the session logic is :mod:`ser.serving.live`)."""

from __future__ import annotations

import dataclasses
import logging
import time

import gradio as gr
import soundfile

from ser.audio.loader import AudioError
from ser.inference.predictor import EmotionClassifier
from ser.inference.quality import QualityConfig, assess_quality, decide, get_speech_detector
from ser.inference.timeline import TimelineConfig, timeline_figure, timeline_for_waveform
from ser.serving.display import UNCERTAIN_LABEL, LabelFiles, label_value
from ser.serving.guard import RequestGuard
from ser.serving.live import STREAM_EVERY_S, LiveConfig, LiveSession, LiveUpdate, calibration_line, live_step, strip_html
from ser.serving.timeline_panel import timeline_summary

logger = logging.getLogger(__name__)

#: Live sessions streaming at once. Each holds one slot of its own queue ("live") while it records;
#: four fit two cores with room to spare (docs/serving.md, "Live mode"); a fifth waits in the queue.
LIVE_CONCURRENCY_LIMIT = 4
#: The stream's own time limit is only a safety net past the recording limit: Gradio re-submits a
#: stream at its time_limit rather than ending it, so the handler ends the recording itself.
LIVE_TIME_LIMIT_SLACK_S = 30
#: Greyed bars while the VAD hears no speech (passed to ``launch``: gradio 6 takes css there).
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

