"""The model step's time in-process and inside the app, side by side (issue 24, part 2).

    python -m benchmarks.model_time                          # bundled model, a real 3 s clip
    python -m benchmarks.model_time --repeats 30 --skip_app  # in-process rows only

In-process rows time ``classify_waveform`` on the same 3 s clip right after the work that precedes
it in a request: nothing, the quality gate's level measurement as it was (``np.dot`` in float64,
which runs in OpenBLAS and wakes its thread pool) and as it is now (``sum_of_squares``, no BLAS),
and the old one again with numpy's BLAS pool capped at one thread (what ``app.py`` does at start,
``limit_numpy_blas_threads``). Then ``app.py`` is started and the same clip is sent to ``/predict``
several times, alternating with in-process calls (so other load on the machine weighs on both
alike): the rows are the model time the app itself reports ("model **N ms**") and the in-process
time measured meanwhile. The target is the app's number within 15 % of the in-process one. The CPU header says which machine gave them.
"""

from __future__ import annotations

import logging
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from benchmarks.common import DEFAULT_REAL_CLIPS_DIR, machine_header, percentile, speech_like_clip
from ser.audio.loader import load_audio
from ser.inference.predictor import BUNDLED_MODEL_DIR, EmotionClassifier
from ser.inference.quality import get_speech_detector, sum_of_squares
from ser.serving.devserver import running_app

logger = logging.getLogger("benchmarks.model_time")


@dataclass
class ModelTimeArguments:
    model: str = field(default=str(BUNDLED_MODEL_DIR), metadata={"help": "Model folder (default: the bundled model)."})
    clip_s: float = field(default=3.0, metadata={"help": "Clip length in seconds."})
    repeats: int = field(default=20, metadata={"help": "Timed calls per row (after 3 untimed ones)."})
    skip_app: bool = field(default=False, metadata={"help": "Only the in-process rows."})


def _clip(scratch: Path, seconds: float) -> tuple[Path, bool]:
    """A real RAVDESS clip of an unseen actor cut to ``seconds`` (the gate passes it), else a tone."""
    real = sorted(DEFAULT_REAL_CLIPS_DIR.glob("Angry/*-21.flac")) if DEFAULT_REAL_CLIPS_DIR.is_dir() else []
    path = scratch / "clip.wav"
    if real:
        samples, rate = soundfile.read(str(real[0]), dtype="float32")
        soundfile.write(str(path), samples[: int(seconds * rate)], rate)
        return path, True
    soundfile.write(str(path), speech_like_clip(seconds, seed=0), 16_000)
    return path, False


def _time_model(classifier: EmotionClassifier, waveform: np.ndarray, before, repeats: int) -> list[float]:
    """Milliseconds of ``classify_waveform`` alone, each call right after ``before(waveform)``."""
    times = []
    for index in range(repeats + 3):
        before(waveform)
        started = time.perf_counter()
        classifier.classify_waveform(waveform)
        if index >= 3:
            times.append(1000 * (time.perf_counter() - started))
        time.sleep(0.2)  # a request's pause, so pools that go to sleep when idle do
    return times


def _old_gate(waveform: np.ndarray) -> None:
    get_speech_detector().speech_probabilities(waveform)
    float(np.dot(waveform.astype(np.float64), waveform))  # the gate's level before the fix


def _new_gate(waveform: np.ndarray) -> None:
    get_speech_detector().speech_probabilities(waveform)
    sum_of_squares(waveform)


def _row(name: str, values: list[float], reference: float | None = None) -> str:
    median = statistics.median(values)
    ratio = f"   {median / reference:5.2f}x in-process" if reference else ""
    return f"{name:<58} p50 {median:6.1f} ms   p95 {percentile(values, 0.95):6.1f} ms   min {min(values):6.1f}{ratio}"


def _app_times(classifier: EmotionClassifier, waveform: np.ndarray, model: str, clip: Path, real: bool, repeats: int, scratch: Path) -> tuple[list[float], list[float]]:
    """(app-reported model times, in-process times): alternating call by call, so whatever else runs
    on the machine meanwhile weighs on both alike."""
    from gradio_client import Client, handle_file

    extra = () if real else ("--quality_gate", "false")
    with running_app(model, scratch / "app.log", extra) as server:
        client = Client(server.url, verbose=False, download_files=False)
        app, local = [], []
        for index in range(repeats + 3):
            _, info, _ = client.predict(handle_file(str(clip)), api_name="/predict")
            time.sleep(0.2)
            in_process = _time_model(classifier, waveform, _new_gate, 1)  # 3 untimed calls, then 1
            if index >= 3:
                app.append(float(re.search(r"model \*\*(\d+) ms", info).group(1)))
                local.extend(in_process)
    return app, local


def main() -> None:
    from threadpoolctl import threadpool_limits
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    (args,) = HfArgumentParser(ModelTimeArguments).parse_args_into_dataclasses()
    print(machine_header())
    with tempfile.TemporaryDirectory(prefix="ser-model-time-") as scratch:
        clip, real = _clip(Path(scratch), args.clip_s)
        classifier = EmotionClassifier.from_pretrained(args.model)
        classifier.warmup()
        waveform = load_audio(clip, classifier.sample_rate)
        print(f"model {Path(args.model).name}, backend {classifier.backend}; {len(waveform) / classifier.sample_rate:.1f} s "
              f"{'RAVDESS clip (actor 21)' if real else 'synthetic tone (no ../shared data)'}; {args.repeats} timed calls per row")
        alone = _time_model(classifier, waveform, lambda _: None, args.repeats)
        reference = statistics.median(alone)
        print(_row("in-process, model alone", alone))
        print(_row("in-process, after the old gate (np.dot, BLAS pool as is)", _time_model(classifier, waveform, _old_gate, args.repeats), reference))
        print(_row("in-process, after the new gate (sum_of_squares)", _time_model(classifier, waveform, _new_gate, args.repeats), reference))
        with threadpool_limits(limits=1, user_api="blas"):
            print(_row("in-process, after the old gate, BLAS capped at 1 thread", _time_model(classifier, waveform, _old_gate, args.repeats), reference))
        if not args.skip_app:
            app, local = _app_times(classifier, waveform, args.model, clip, real, args.repeats, Path(scratch))
            print("app.py started; its requests alternate with in-process calls:")
            print(_row("in-process, after the new gate (alternating with the app)", local))
            print(_row("app.py /predict, the model time it reports", app, statistics.median(local)))


if __name__ == "__main__":
    main()
