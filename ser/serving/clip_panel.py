"""The single-clip panel: record or upload, Submit, the bars; opt-in calibration to the visitor's
voice; the example clips; and the public ``/predict`` and ``/predict_calibrated`` endpoints.

:func:`answer_clip` is the request handler (decode, quality gate, model, confidence rule); audio
problems become ``gr.Error`` here, at the UI edge. :func:`build_clip_panel` lays the panel out inside
the caller's ``gr.Blocks``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr

from ser.audio.loader import ACCEPTED_FORMATS, AudioError, load_audio
from ser.inference.adaptation import AdaptationUnsupportedError
from ser.inference.predictor import EmotionClassifier
from ser.inference.quality import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    Answer,
    QualityConfig,
    QualityReport,
    check_quality,
    decide,
)
from ser.serving.calibration import Calibration, CalibrationError
from ser.serving.display import LabelFiles, api_payload, format_info, format_uncertainty, label_value, model_display_name
from ser.serving.examples import Example
from ser.serving.guard import RequestGuard
from ser.serving.limits import DEFAULT_MAX_DURATION_S, ServingError
from ser.serving.ui_errors import user_error

logger = logging.getLogger(__name__)

#: Public endpoints: ``/gradio_api/call/predict`` and ``Client.predict(..., api_name="/predict")``.
API_NAME = "predict"
#: ``predict`` calibrated to the caller's voice: (audio, calibration) -> (..., calibration); see README.
CALIBRATED_API_NAME = "predict_calibrated"


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
        raise user_error(f"No audio received. Record with the microphone or upload a file ({ACCEPTED_FORMATS}).")
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
        raise user_error(str(error)) from error
    except AdaptationUnsupportedError as error:
        raise user_error(f"Calibration is not available: {error}") from error
    model_s = time.perf_counter() - checked
    answer = decide(prediction.probabilities, confidence_threshold)
    logger.info("%s: %s (%.2f%s) in %.0f ms", Path(audio_path).name, answer.label, answer.confidence,
                ", uncertain" if answer.uncertain else "", model_s * 1000)
    info = format_info(prediction, decoded - started, model_s)
    if report is not None:
        info += f" · quality check {(checked - decoded) * 1000:.0f} ms ({report.speech_s:.1f} s of speech)"
    if calibration is not None:
        info += "\n\n" + calibration.describe(classifier.labels)
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


def build_clip_panel(
    classifier: EmotionClassifier,
    guard: RequestGuard,
    label_files: LabelFiles,
    max_duration_s: float | None,
    quality: QualityConfig | None,
    confidence_threshold: float,
    examples: Sequence[Example],
) -> None:
    """The panel's components and events, inside the caller's ``gr.Blocks``. Registers ``/predict``
    before any other event (an event without ``api_name`` is named after its function)."""

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
            raise user_error(str(error)) from error

    can_calibrate = classifier.supports_adaptation

    def calibrated_request(audio: str | None, calibration: Calibration) -> tuple[dict[str, float] | str, str, dict, Calibration]:
        answer, report, info, updated = answer_clip_calibrated(classifier, audio, calibration, max_duration_s, quality, confidence_threshold)
        return label_value(answer, label_files), info, {**api_payload(answer, report), "calibration": updated.summary(classifier.labels)}, updated

    def run_calibrated(audio: str | None, make_calibration: Callable[[], Calibration]) -> tuple[dict[str, float] | str, str, dict, Calibration]:
        # ``make_calibration`` runs inside the guard, so a refused calibration still releases the upload.
        try:
            return guard.run(audio, lambda: calibrated_request(audio, make_calibration()), lambda result: result[2]["probabilities"])
        except ServingError as error:
            raise user_error(str(error)) from error

    def predict_calibrated(audio: str | None, calibration: dict | None) -> tuple[dict[str, float] | str, str, dict, dict | None]:
        """Classify a speech clip calibrated to the caller's voice. Send the calibration returned by your previous
        call (null to start): the clip is added to it, and once it holds enough clips the answer is standardised
        with its statistics instead of the training set's. Returns /predict's three outputs (the JSON with a
        'calibration' field: calibrated, clips, min_clips, capacity) and the updated calibration (statistics only)."""
        def parsed() -> Calibration:
            if not can_calibrate:
                return Calibration()  # classifying with it raises the model's own explanation
            try:
                return Calibration.from_dict(calibration, classifier.embedding_shape, num_labels=len(classifier.labels))
            except CalibrationError as error:
                raise user_error(str(error)) from error

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
        state = (calibration or Calibration()).describe(classifier.labels)
        return state if calibrate else f"Off: answers use the training statistics. ({state})"

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
    if examples:
        gr.Examples(
            examples=[str(example.path) for example in examples],
            example_labels=[example.label for example in examples],
            inputs=audio,
            outputs=[label, info, answer_json],
            fn=predict,
            # Cached outputs would freeze the timing line, and caching at start slows boot.
            cache_examples=False,
            run_on_click=True,
            api_visibility="private",
            label="Examples: real acted speech of RAVDESS actors never trained on (CC BY-NC-SA 4.0)",
        )
