"""The long-recording panel: upload a recording, get one emotion per speech segment (plot, table,
JSON), and the public ``/timeline`` endpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from ser.audio.loader import ACCEPTED_FORMATS, AudioError
from ser.inference.predictor import EmotionClassifier
from ser.inference.timeline import (
    TABLE_HEADERS,
    Timeline,
    TimelineConfig,
    timeline_figure,
    timeline_for_file,
    timeline_table,
)
from ser.serving.examples import Example
from ser.serving.guard import RequestGuard
from ser.serving.limits import ServingError
from ser.serving.ui_errors import user_error

logger = logging.getLogger(__name__)

#: Public endpoint: ``/gradio_api/call/timeline`` and ``Client.predict(..., api_name="/timeline")``.
TIMELINE_API_NAME = "timeline"


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
        raise user_error(f"No audio received. Upload a recording ({ACCEPTED_FORMATS}).")
    started = time.perf_counter()
    try:
        timeline = timeline_for_file(classifier, audio_path, config, progress=progress)
    except AudioError as error:
        raise user_error(str(error)) from error
    logger.info("%s: timeline of %d segments in %.1f s", Path(audio_path).name, len(timeline.segments), time.perf_counter() - started)
    return timeline


def build_timeline_panel(
    classifier: EmotionClassifier, guard: RequestGuard, timeline_config: TimelineConfig, examples: Sequence[Example] = ()
) -> None:
    """The panel's components and events, inside the caller's ``gr.Blocks``."""
    confidence_threshold = timeline_config.confidence_threshold

    def timeline_of(audio: str | None, progress: gr.Progress) -> Timeline:
        try:
            with guard.handling(audio):
                return build_timeline_records(
                    classifier, audio, timeline_config, progress=lambda fraction, text: progress(fraction, desc=text)
                )
        except ServingError as error:
            raise user_error(str(error)) from error

    def timeline(audio: str | None, progress=gr.Progress()) -> list[dict]:
        """Emotion timeline of a long recording: [{start_s, end_s, label, confidence, uncertain, probabilities}] per speech segment."""
        return timeline_of(audio, progress).records()

    def show_timeline(audio: str | None, progress=gr.Progress()):
        # The page's own event: plot, table, summary and the same JSON the API returns, from one pass.
        result = timeline_of(audio, progress)
        return timeline_figure(result, classifier.labels), timeline_table(result), timeline_summary(result), result.records()

    with gr.Accordion("Long recording: emotion timeline", open=False, elem_id="timeline-panel"):
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
        timeline_info = gr.Markdown(elem_id="timeline-info")
        timeline_plot = gr.Plot(label="Emotion timeline", elem_id="timeline-plot")
        timeline_rows = gr.Dataframe(headers=TABLE_HEADERS, label="Segments", interactive=False)
        with gr.Accordion("Segments as JSON (what the API returns)", open=False):
            timeline_json = gr.JSON(label="Segments")
        if examples:
            # Clicking fills the upload box only: a timeline takes seconds, so it runs on "Build timeline".
            gr.Examples(
                examples=[str(example.path) for example in examples],
                example_labels=[example.label for example in examples],
                inputs=long_audio,
                cache_examples=False,
                api_visibility="private",
                label="Example: a minute of one RAVDESS actor never trained on, through six emotions",
            )
        # API-only trigger for /timeline (never shown); the page runs show_timeline.
        timeline_api_trigger = gr.Button(visible=False)
    timeline_button.click(
        show_timeline,
        inputs=long_audio,
        outputs=[timeline_plot, timeline_rows, timeline_info, timeline_json],
        api_visibility="private",
    )
    timeline_api_trigger.click(timeline, inputs=long_audio, outputs=timeline_json, api_name=TIMELINE_API_NAME)
