"""The Gradio Space: record or upload speech, get a probability for each emotion (UI + API).

    python app.py                          # bundled model (models/ser-multicorpus), http://127.0.0.1:7860
    python app.py --model runs/my-model    # or SER_MODEL=... ; a local folder or a hub id

This file is the Space's table of contents: its arguments, loading the model, and the panels put
together. The panels and their handlers are in ``ser/serving/``: ``clip_panel`` (one clip, calibration,
examples, ``/predict`` and ``/predict_calibrated``), ``live_panel`` (live mode) and ``timeline_panel``
(long recordings, ``/timeline``); ``middleware`` adds ``/metrics`` and ``/health``.

The model is loaded and warmed up once, before the server starts; the handlers only read it.
``demo`` (what ``gradio app.py`` and Spaces tooling look up) is resolved lazily on first access
(PEP 562 module ``__getattr__``) from ``$SER_MODEL`` or the bundled model, so ``import app``
never loads a model and works before the bundled model exists. Tests call ``build_demo``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from transformers import HfArgumentParser

from ser.audio.loader import ACCEPTED_FORMATS
from ser.inference.backends import BackendError
from ser.inference.hardware import limit_numpy_blas_threads, tune_malloc_for_serving
from ser.inference.predictor import EmotionClassifier, ModelNotConfiguredError
from ser.inference.quality import DEFAULT_CONFIDENCE_THRESHOLD, QualityConfig, assess_quality, get_speech_detector
from ser.inference.timeline import TimelineConfig
from ser.serving.clip_panel import (  # noqa: F401  (answer_clip & co. are the app's documented handlers)
    API_NAME,
    CALIBRATED_API_NAME,
    answer_clip,
    answer_clip_calibrated,
    build_clip_panel,
    classify_clip,
)
from ser.serving.display import UNCERTAIN_LABEL, LabelFiles, api_payload, label_value, model_display_name  # noqa: F401
from ser.serving.examples import CLIP_PANEL, TIMELINE_PANEL, for_panel, load_examples
from ser.serving.limits import (
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_UPLOAD_TTL_S,
    ServingConfig,
    env_default,
)
from ser.serving.live import LIVE_CONCURRENCY_LIMIT, LiveConfig, LiveSessions
from ser.serving.live_panel import LiveHandlers, build_live_mode
from ser.serving.middleware import create_serving, launch_kwargs
from ser.serving.monitoring import DEFAULT_DRIFT_WINDOW
from ser.serving.page_sessions import free_closed_pages
from ser.serving.timeline_panel import TIMELINE_API_NAME, build_timeline_panel  # noqa: F401

logger = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = APP_DIR / "examples"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: One inference at a time: torch already uses every core, so parallel requests would only slow each other.
DEFAULT_CONCURRENCY_LIMIT = 1
#: Requests waiting beyond this are refused ("queue full") rather than piling up.
DEFAULT_MAX_QUEUE_SIZE = 16


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
    """Load the model once and run one throw-away pass so the first user does not wait for it. The
    automatic backend is timed as it will serve: each candidate call right after the quality gate."""
    detector = get_speech_detector()
    classifier = EmotionClassifier.from_pretrained(
        model_name_or_path, backend=backend, before_each_call=lambda waveform: assess_quality(waveform, detector.sample_rate, QualityConfig())
    )
    classifier.warmup()
    return classifier



def example_paths() -> list[str]:
    """The single-clip panel's examples: RAVDESS test actors, one per class (``python -m scripts.make_examples``)."""
    return [str(example.path) for example in for_panel(load_examples(EXAMPLES_DIR), CLIP_PANEL)]


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
    live_config = LiveConfig(
        max_duration_s=float(live_max_duration_s or max_duration_s or DEFAULT_MAX_DURATION_S),
        confidence_threshold=confidence_threshold,
    )
    live_sessions = LiveSessions(live_config, LIVE_CONCURRENCY_LIMIT)
    examples = load_examples(EXAMPLES_DIR)
    serving_state, guard = create_serving(
        classifier, serving or ServingConfig(), confidence_threshold, concurrency_limit, user_errors=(gr.Error,),
        example_files=[example.path for example in examples], live_sessions=live_sessions,
    )
    label_files = LabelFiles()
    live = LiveHandlers(classifier, guard, serving_state.metrics, live_sessions, label_files, quality, timeline_config)

    labels = ", ".join(classifier.labels)
    with gr.Blocks(title="Speech emotion recognition") as demo:
        gr.Markdown(
            "# Speech emotion recognition\n"
            f"Record or upload a short clip of speech and press **Submit** to see how likely each emotion is ({labels}). "
            f"Accepted: {ACCEPTED_FORMATS}; up to {max_duration_s:g} s. "
            "The model was trained on acted English, German and Polish speech: read the bars as an estimate, not a verdict."
        )
        # The clip panel first: it registers the public /predict before any other event.
        build_clip_panel(
            classifier, guard, label_files, max_duration_s, quality, confidence_threshold, for_panel(examples, CLIP_PANEL),
        )
        build_live_mode(live)
        build_timeline_panel(classifier, guard, timeline_config, for_panel(examples, TIMELINE_PANEL))
        gr.Markdown(f"Model: `{model_display_name(classifier.name)}`")
        free_closed_pages(demo, live.closed)
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    serving_state.blocks = demo
    demo.serving_state = serving_state
    return demo


@functools.cache
def _configured_demo() -> gr.Blocks:
    tune_malloc_for_serving()  # as main() does, for `gradio app.py`
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
    # Before the server's threads: glibc's defaults let RSS climb with live traffic (audio buffers of every size).
    tune_malloc_for_serving()
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
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(demo.serving_state))


if __name__ == "__main__":
    main()
