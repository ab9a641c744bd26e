"""How an answer is shown on the page and in the API: the gr.Label value (with the "uncertain"
headline), the line under the bars, and the JSON payload. Shared by the clip and live panels."""

from __future__ import annotations

import collections
import json
import tempfile
import threading
from pathlib import Path

from ser.inference.predictor import Prediction
from ser.inference.quality import Answer, QualityReport

#: What the gr.Label shows instead of an emotion when the top probability is below the threshold.
UNCERTAIN_LABEL = "uncertain"


def format_info(prediction: Prediction, decode_s: float, model_s: float) -> str:
    """The line under the bars: how long the clip is and how long the model took."""
    return f"Clip length **{prediction.duration_s:.2f} s** · model **{model_s * 1000:.0f} ms** (decoding {decode_s * 1000:.0f} ms)"


def format_uncertainty(answer: Answer) -> str:
    return (
        f"**Uncertain:** the most likely class, {answer.label}, has {answer.confidence:.0%}, below the "
        f"{answer.confidence_threshold:.0%} this app needs to name an emotion. The bars show how the rest compare."
    )



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



def model_display_name(name: str) -> str:
    """A hub id as is; a local folder by its own name (the page should not show server paths)."""
    return Path(name).name if Path(name).is_dir() else name

