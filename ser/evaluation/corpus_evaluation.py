"""Scoring a trained model on a labelled corpus it was not trained on (evaluate_crosslingual.py).

Steps, each a function so tests can call them alone:
1. ``select_clips``: scan the class folders (``ser.corpus``) and map each folder onto one of the
   *model's* labels; a folder the model cannot predict is skipped and reported, never guessed.
2. ``run_inference``: batched ``predict_proba`` with the shared loader; unreadable files are listed.
3. ``score_predictions``: "open" (argmax over every model label) and "restricted" (argmax over the
   classes the corpus contains) metrics with bootstrap CIs (``ser.metrics``).
4. ``write_outputs``: metrics.json, predictions.csv, confusion_matrix.{csv,png}, coverage.{csv,png}, report.md.

Alongside: what the quality gate (ser.quality) would refuse, by reason (clips are still scored,
never dropped silently), accuracy vs coverage for the confidence threshold, and, with
``snr_db``, accuracy under white noise at each SNR.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .adaptation import AdaptationPlan, AdaptationUnsupportedError, adapted_probabilities, check_mode, plan_adaptation
from .audio import AudioError, load_audio
from .augment import add_noise
from .corpus import Clip, CorpusError, normalise_speaker_id, scan_corpus
from .labels import DEFAULT_EXCLUDED_LABELS, canonical_label
from .metrics import bootstrap_ci, classification_metrics, macro_f1, unweighted_average_recall
from .quality import DEFAULT_CONFIDENCE_THRESHOLD, QualityConfig, assess_quality, coverage_curve

logger = logging.getLogger(__name__)

#: Name used in per-speaker tables for files whose name encodes no known speaker.
UNKNOWN_SPEAKER = "unknown"

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_CSV_FILE = "confusion_matrix.csv"
CONFUSION_PNG_FILE = "confusion_matrix.png"
REPORT_FILE = "report.md"
COVERAGE_CSV_FILE = "coverage.csv"
COVERAGE_PNG_FILE = "coverage.png"


class Classifier(Protocol):
    """What evaluation needs from a model (``ser.predictor.EmotionClassifier`` or a future backend)."""

    name: str
    labels: list[str]
    sample_rate: int

    def predict_proba(self, waveforms: Sequence[np.ndarray]) -> np.ndarray: ...


# -- 1. which clips, under which model label ------------------------------------------------------
@dataclass
class EvaluationSet:
    """Clips relabelled with the model's own label names, plus everything left out and why."""

    root: Path
    clips: list[Clip]
    label_mapping: dict[str, str]
    skipped_folders: list[dict] = field(default_factory=list)
    excluded_counts: dict[str, int] = field(default_factory=dict)
    dropped_by_speaker_filter: int = 0


def parse_speakers(spec: str | Iterable[str] | None) -> set[str] | None:
    """``"21,22"`` or ``["21", "22"]`` -> normalised speaker ids; ``None``/empty: no filter."""
    if spec is None:
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    speakers = {normalise_speaker_id(item) for item in items if str(item).strip()}
    return speakers or None


def parse_label_list(spec: str | Iterable[str] | None) -> list[str]:
    """``"surprised,neutral"`` -> ``["surprised", "neutral"]``; empty string: none."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [item.strip() for item in items if item.strip()]


def _model_label_lookup(model_labels: Sequence[str]) -> dict[str, str]:
    """Corpus label (any alias, any case) -> the model's own spelling of it."""
    lookup: dict[str, str] = {}
    for label in model_labels:
        lookup[label.lower()] = label
        lookup.setdefault(canonical_label(label) or label.lower(), label)
    return lookup


def _to_model_label(label: str, lookup: Mapping[str, str]) -> str | None:
    return lookup.get(label.lower()) or lookup.get(canonical_label(label) or "")


def _class_folder(clip: Clip, root: Path) -> str:
    return Path(clip.path).relative_to(root).parts[0]


def select_clips(
    data_dir: str | Path,
    model_labels: Sequence[str],
    label_map: Mapping[str, str] | None = None,
    exclude_labels: Iterable[str] = DEFAULT_EXCLUDED_LABELS,
    speakers: set[str] | None = None,
) -> EvaluationSet:
    """Clips under ``data_dir`` whose folder maps onto one of ``model_labels``."""
    corpus = scan_corpus(data_dir, label_map=label_map, exclude_labels=exclude_labels)
    lookup = _model_label_lookup(model_labels)
    skipped: list[dict] = []
    for folder in corpus.unknown_folders:
        files = sum(1 for path in (corpus.root / folder).rglob("*") if path.is_file())
        skipped.append({"folder": folder, "reason": "not an emotion name this project knows; map it with --label_map", "files": files})
    for folder in corpus.empty_folders:
        skipped.append({"folder": folder, "reason": "no audio files", "files": 0})

    clips: list[Clip] = []
    mapping: dict[str, str] = {}
    unmappable: dict[str, tuple[str, int]] = {}
    for clip in corpus.clips:
        folder = _class_folder(clip, corpus.root)
        model_label = _to_model_label(clip.label, lookup)
        if model_label is None:
            _, count = unmappable.get(folder, (clip.label, 0))
            unmappable[folder] = (clip.label, count + 1)
            continue
        mapping[folder] = model_label
        clips.append(Clip(path=clip.path, label=model_label, speaker=clip.speaker, corpus=clip.corpus))
    for folder, (label, count) in sorted(unmappable.items()):
        skipped.append(
            {"folder": folder, "reason": f"maps to {label!r}, which the model does not predict ({', '.join(model_labels)})", "files": count}
        )
    for entry in skipped:
        logger.warning("Skipping folder %r (%d files): %s", entry["folder"], entry["files"], entry["reason"])

    dropped = 0
    if speakers is not None:
        found = sorted({clip.speaker for clip in clips if clip.speaker is not None})
        kept = [clip for clip in clips if clip.speaker in speakers]
        dropped = len(clips) - len(kept)
        if not kept:
            raise CorpusError(f"No clips from speakers {sorted(speakers)}; speakers found: {found or 'none parsed from the file names'}.")
        clips = kept
    if not clips:
        raise CorpusError(
            f"No clip under {corpus.root} maps onto the model's labels ({', '.join(model_labels)}); "
            f"skipped folders: {[entry['folder'] for entry in skipped]}. Map folder names with --label_map."
        )
    return EvaluationSet(
        root=corpus.root,
        clips=clips,
        label_mapping=dict(sorted(mapping.items())),
        skipped_folders=skipped,
        excluded_counts=dict(corpus.excluded_counts),
        dropped_by_speaker_filter=dropped,
    )


# -- 2. inference -------------------------------------------------------------------------------
@dataclass
class InferenceResult:
    clips: list[Clip]
    probabilities: np.ndarray  # (len(clips), len(labels)), rows in ``clips`` order
    unreadable: list[dict]
    inference_s: float
    #: Per scored clip (``clips`` order): the quality gate's problem codes; ``None`` when not checked.
    quality_codes: list[list[str]] | None = None
    #: Which statistics each clip was standardised with (``None``: no adaptation asked for).
    adaptation: AdaptationPlan | None = None


def _predict_batch(
    score: Callable[[list[np.ndarray]], np.ndarray], batch: list[tuple[Clip, np.ndarray]], unreadable: list[dict]
) -> list[tuple[Clip, np.ndarray]]:
    try:
        rows = score([waveform for _, waveform in batch])
        return [(clip, row) for (clip, _), row in zip(batch, rows)]
    except AudioError:
        if len(batch) == 1:
            raise
    # One bad clip must not sink the batch: isolate it.
    scored = []
    for clip, waveform in batch:
        try:
            scored.append((clip, score([waveform])[0]))
        except AudioError as error:
            unreadable.append({"path": clip.path, "reason": f"{type(error).__name__}: {error}"})
    return scored


def run_inference(
    classifier: Classifier,
    clips: Sequence[Clip],
    batch_size: int = 8,
    progress: bool = True,
    quality: QualityConfig | None = None,
    transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
    adapt: str = "none",
) -> InferenceResult:
    """Load each clip with the shared loader and score it; long clips are windowed by the predictor.

    ``quality``: also run the quality gate on each clip (recorded, not acted on).
    ``transform(waveform, clip_index)``: applied after loading (e.g. added noise).
    ``adapt`` (``ser.adaptation``): ``corpus`` / ``speaker`` embed every clip first, then classify each
    with the statistics of all clips scored / of its speaker (``clip.speaker``); no labels are used.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    check_mode(adapt)
    # Adapting: the first pass keeps embeddings (the statistics need every clip), the second classifies.
    score = classifier.embed_batch if adapt != "none" else classifier.predict_proba
    started = time.perf_counter()
    unreadable: list[dict] = []
    scored: list[tuple[Clip, np.ndarray]] = []
    batch: list[tuple[Clip, np.ndarray]] = []
    codes: dict[int, list[str]] = {}
    for index, clip in enumerate(tqdm(clips, desc="Scoring", unit="clip", disable=not progress)):
        try:
            waveform = load_audio(clip.path, classifier.sample_rate)
            if transform is not None:
                waveform = transform(waveform, index)
            if quality is not None:
                codes[id(clip)] = assess_quality(waveform, classifier.sample_rate, quality).codes
            batch.append((clip, waveform))
        except AudioError as error:
            logger.warning("Unreadable %s: %s", clip.path, error)
            unreadable.append({"path": clip.path, "reason": f"{type(error).__name__}: {error}"})
        if len(batch) == batch_size:
            scored += _predict_batch(score, batch, unreadable)
            batch = []
    if batch:
        scored += _predict_batch(score, batch, unreadable)
    plan = None
    if adapt != "none":
        embeddings = np.stack([row for _, row in scored]) if scored else np.zeros((0, *classifier.embedding_shape), np.float32)
        # (corpus, speaker): ids of different corpora in one folder (Audio Emotions) can collide.
        speakers = [f"{clip.corpus}:{clip.speaker}" if clip.speaker is not None else None for clip, _ in scored]
        plan = plan_adaptation(embeddings, adapt, speakers)
        probabilities = adapted_probabilities(classifier, embeddings, plan)
    else:
        probabilities = np.stack([row for _, row in scored]) if scored else np.zeros((0, len(classifier.labels)))
    return InferenceResult(
        clips=[clip for clip, _ in scored],
        probabilities=probabilities,
        unreadable=unreadable,
        inference_s=time.perf_counter() - started,
        quality_codes=[codes[id(clip)] for clip, _ in scored] if quality is not None else None,
        adaptation=plan,
    )


# -- 3. scoring ---------------------------------------------------------------------------------
def present_labels(y_true: Sequence[str], labels: Sequence[str]) -> list[str]:
    """The model labels that occur in ``y_true``, in model order."""
    present = set(y_true)
    return [label for label in labels if label in present]


def open_predictions(probabilities: np.ndarray, labels: Sequence[str]) -> list[str]:
    return [labels[index] for index in np.argmax(probabilities, axis=1)]


def restricted_predictions(probabilities: np.ndarray, labels: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """Argmax over the ``allowed`` columns only (the classes the corpus has)."""
    columns = [list(labels).index(label) for label in allowed]
    return [allowed[index] for index in np.argmax(probabilities[:, columns], axis=1)]


def _scores(y_true: list[str], y_pred: list[str], labels: list[str], n_resamples: int, seed: int) -> dict:
    metrics = classification_metrics(y_true, y_pred, labels)
    metrics["ci95"] = bootstrap_ci(y_true, y_pred, labels, n_resamples=n_resamples, seed=seed)
    return metrics


def score_predictions(
    y_true: Sequence[str],
    probabilities: np.ndarray,
    labels: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Open metrics at the top level (labels = all model labels) and ``restricted`` (present classes)."""
    y_true, labels = list(y_true), list(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(y_true), len(labels)):
        raise ValueError(f"Probabilities of shape {probabilities.shape}, expected {(len(y_true), len(labels))}.")
    unknown = sorted(set(y_true) - set(labels))
    if unknown:
        raise ValueError(f"True labels {unknown} are not model labels {labels}.")
    present = present_labels(y_true, labels)
    metrics = _scores(y_true, open_predictions(probabilities, labels), labels, n_resamples, seed)
    metrics["restricted"] = _scores(y_true, restricted_predictions(probabilities, labels, present), present, n_resamples, seed)
    return metrics


def per_speaker_scores(
    speakers: Sequence[str | None],
    y_true: Sequence[str],
    open_pred: Sequence[str],
    restricted_pred: Sequence[str],
    labels: Sequence[str],
) -> dict[str, dict]:
    """Accuracy (open and restricted) and UAR for each speaker, speakers in natural order."""
    rows: dict[str, list[int]] = defaultdict(list)
    for index, speaker in enumerate(speakers):
        rows[speaker or UNKNOWN_SPEAKER].append(index)

    def order(speaker: str) -> tuple[int, int | str]:
        return (0, int(speaker)) if speaker.isdigit() else (1, speaker)

    result = {}
    for speaker in sorted(rows, key=order):
        index = rows[speaker]
        true = [y_true[i] for i in index]
        result[speaker] = {
            "n": len(index),
            "accuracy": float(np.mean([open_pred[i] == y_true[i] for i in index])),
            "restricted_accuracy": float(np.mean([restricted_pred[i] == y_true[i] for i in index])),
            "uar": unweighted_average_recall(true, [open_pred[i] for i in index], labels),
        }
    return result


def quality_gate_summary(
    clips: Sequence[Clip], codes: Sequence[Sequence[str]], correct: Sequence[bool], config: QualityConfig
) -> dict:
    """How many scored clips the gate would refuse, by reason, and the accuracy on each side."""
    by_reason = Counter(code for clip_codes in codes for code in clip_codes)
    refused = [index for index, clip_codes in enumerate(codes) if clip_codes]
    passed = [index for index, clip_codes in enumerate(codes) if not clip_codes]

    def accuracy(index: list[int]) -> float | None:
        return float(np.mean([correct[i] for i in index])) if index else None

    return {
        "config": asdict(config),
        "n_checked": len(codes),
        "n_passed": len(passed),
        "n_refused": len(refused),
        "by_reason": dict(sorted(by_reason.items())),
        "accuracy_passed": accuracy(passed),
        "accuracy_refused": accuracy(refused),
        "refused": [{"path": clips[i].path, "codes": list(codes[i])} for i in refused],
    }


def parse_snr_list(spec: str | Iterable[float] | None) -> list[float]:
    """``"20,10,5,0"`` -> ``[20.0, 10.0, 5.0, 0.0]``; empty: no noise runs."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        return [float(item) for item in items if str(item).strip()]
    except ValueError as error:
        raise ValueError(f"SNRs must be numbers in dB, comma-separated (e.g. '20,10,5,0'): {error}") from None


def noise_robustness(
    classifier: Classifier,
    clips: Sequence[Clip],
    snr_db: Sequence[float],
    clean_probabilities: np.ndarray,
    labels: Sequence[str],
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    adapt: str = "none",
) -> dict:
    """Accuracy with white noise added at each SNR (relative to each clip's mean power).

    The noise of clip ``i`` comes from ``default_rng([seed, i])``: the same at every run and batch size.
    ``adapt``: as the clean run; the statistics are then computed from the noisy clips.
    """
    y_true = [clip.label for clip in clips]
    present = present_labels(y_true, labels)

    def row(name: float | None, probabilities: np.ndarray) -> dict:
        open_pred = open_predictions(probabilities, labels)
        return {
            "snr_db": name,
            "n": len(y_true),
            "accuracy": float(np.mean([p == t for p, t in zip(open_pred, y_true)])),
            "macro_f1": macro_f1(y_true, open_pred, labels),
            "uar": unweighted_average_recall(y_true, open_pred, labels),
            "restricted_accuracy": float(
                np.mean([p == t for p, t in zip(restricted_predictions(probabilities, labels, present), y_true)])
            ),
        }

    rows = [row(None, clean_probabilities)]
    for snr in snr_db:
        def noisy(waveform: np.ndarray, index: int, snr: float = snr) -> np.ndarray:
            return add_noise(waveform, np.random.default_rng([seed, index]), (snr, snr))

        result = run_inference(classifier, clips, batch_size=batch_size, progress=progress, transform=noisy, adapt=adapt)
        if len(result.clips) != len(clips):
            raise RuntimeError(f"{len(clips) - len(result.clips)} clips failed with noise added at {snr:g} dB.")
        rows.append(row(float(snr), result.probabilities))
    return {"noise": "white", "seed": seed, "snr_reference": "mean power of the whole clip", "rows": rows}


# -- 4. outputs ---------------------------------------------------------------------------------
def write_coverage_csv(path: Path, rows: Sequence[Mapping]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["threshold", "coverage", "accuracy", "n_kept"])
        for row in rows:
            accuracy = "" if row["accuracy"] is None else f"{row['accuracy']:.6f}"
            writer.writerow([f"{row['threshold']:.2f}", f"{row['coverage']:.6f}", accuracy, row["n_kept"]])


def plot_coverage(path: Path, rows: Sequence[Mapping], default_threshold: float, title: str) -> None:
    """Accuracy of the kept answers and the share kept, against the confidence threshold."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    axis = figure.subplots()
    thresholds = [row["threshold"] for row in rows]
    axis.plot(thresholds, [row["coverage"] for row in rows], marker=".", label="coverage (share answered)")
    axis.plot(
        thresholds, [np.nan if row["accuracy"] is None else row["accuracy"] for row in rows], marker=".", label="accuracy of answered"
    )
    axis.axvline(default_threshold, color="grey", linestyle="--", linewidth=1, label=f"default threshold {default_threshold:g}")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("confidence threshold (top probability >= threshold is answered)")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", fontsize=8)
    axis.set_title(title, fontsize=9)
    figure.savefig(path, dpi=120)


def write_predictions_csv(
    path: Path, clips: Sequence[Clip], probabilities: np.ndarray, labels: Sequence[str], open_pred: Sequence[str], restricted_pred: Sequence[str]
) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "speaker", "true", "predicted", "predicted_restricted", *(f"prob_{label}" for label in labels)])
        for clip, row, predicted, restricted in zip(clips, probabilities, open_pred, restricted_pred):
            writer.writerow([clip.path, clip.speaker or UNKNOWN_SPEAKER, clip.label, predicted, restricted, *(f"{value:.6f}" for value in row)])


def write_confusion_csv(path: Path, matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true\\predicted", *labels])
        for label, row in zip(labels, matrix):
            writer.writerow([label, *row])


def row_normalise(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its total; rows with no clips (a class the corpus lacks) become NaN."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, matrix / totals, np.nan)


def plot_confusion_matrix(path: Path, matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> None:
    """Two panels, counts and row-normalised (recall on the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    normalised = row_normalise(counts)
    size = max(4.0, 0.7 * len(labels) + 2.0)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size + 1.5, size + 0.8), constrained_layout=True)
    cmap = plt.get_cmap("Blues").with_extremes(bad="#eeeeee")  # grey: rows of classes the corpus lacks
    panels = ((axes[0], counts.astype(float), "Counts", "{:.0f}"), (axes[1], normalised, "Row-normalised (recall)", "{:.2f}"))
    for axis, values, panel_title, text_format in panels:
        vmax = 1.0 if values is normalised else max(1.0, float(np.nanmax(values)))
        image = axis.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=vmax)
        axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        axis.set_yticks(range(len(labels)), labels)
        axis.set_xlabel("Predicted")
        axis.set_ylabel("True")
        axis.set_title(panel_title)
        for row in range(len(labels)):
            if values is normalised and np.isnan(values[row]).all():
                axis.text((len(labels) - 1) / 2, row, "not in corpus", ha="center", va="center", color="#666666", fontsize=9)
                continue
            for column in range(len(labels)):
                value = values[row, column]
                colour = "white" if value > 0.6 * vmax else "black"
                axis.text(column, row, text_format.format(value), ha="center", va="center", color=colour, fontsize=9)
        figure.colorbar(image, ax=axis, shrink=0.8)
    figure.suptitle(title)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _ci(values: Sequence[float]) -> str:
    return f"{values[0]:.3f}–{values[1]:.3f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _robustness_report(metrics: Mapping) -> list[str]:
    """Quality gate, accuracy vs coverage and noise sections (each only when measured)."""
    lines: list[str] = []
    gate = metrics.get("quality_gate")
    if gate:
        reasons = ", ".join(f"{code}: {count}" for code, count in gate["by_reason"].items()) or "none"
        lines += [
            "", "### Quality gate (clips the app would refuse; all clips are still scored above)", "",
            *_table(
                ["Checked", "Would refuse", "Reasons", "Accuracy (passed)", "Accuracy (refused)"],
                [[gate["n_checked"], gate["n_refused"], reasons, _percent(gate["accuracy_passed"]), _percent(gate["accuracy_refused"])]],
            ),
        ]
    coverage = metrics.get("coverage")
    if coverage:
        default = metrics.get("confidence_threshold")

        def is_default(row: dict) -> bool:
            return default is not None and abs(row["threshold"] - default) < 1e-9

        lines += [
            "", "### Accuracy vs coverage (open; answered = top probability >= threshold)", "",
            *_table(
                ["Threshold", "Coverage", "Accuracy of answered", "Answered"],
                [
                    [f"{row['threshold']:.2f}" + (" (default)" if is_default(row) else ""),
                     _percent(row["coverage"]), _percent(row["accuracy"]), row["n_kept"]]
                    # Every 0.1 step, and the default threshold's row wherever it falls.
                    for row in coverage
                    if round(row["threshold"] * 100) % 10 == 0 or is_default(row)
                ],
            ),
            "", f"Every 0.05 step: `{COVERAGE_CSV_FILE}`, `{COVERAGE_PNG_FILE}`.",
        ]
    noise = metrics.get("noise_robustness")
    if noise:
        lines += [
            "", f"### Noise robustness ({noise['noise']} noise, SNR relative to the {noise['snr_reference']}, seed {noise['seed']})", "",
            *_table(
                ["SNR (dB)", "Accuracy (open)", "Macro-F1", "UAR", "Accuracy (restricted)", "n"],
                [
                    ["clean" if row["snr_db"] is None else f"{row['snr_db']:g}", f"{row['accuracy']:.3f}", f"{row['macro_f1']:.3f}",
                     f"{row['uar']:.3f}", f"{row['restricted_accuracy']:.3f}", row["n"]]
                    for row in noise["rows"]
                ],
            ),
        ]
    return lines


def adaptation_sentence(metrics: Mapping) -> str:
    """What report.md says about the standardisation statistics the clips were scored with."""
    adapt = metrics.get("adapt") or "none"
    if adapt == "none":
        return "**Adaptation**: none; every clip was scored on its own, with the training set's statistics (as the app scores a single clip)."
    details = metrics.get("adaptation") or {}
    text = (
        f"**Adaptation**: `--adapt {adapt}`. Each clip's embedding was standardised with statistics computed from "
        + ("all the clips scored here" if adapt == "corpus" else "its own speaker's clips here")
        + ". This used **no labels**, but it **did see the test clips** (unlabeled) before scoring them, "
        "so these numbers are for a setting where a batch of the speaker's or corpus's audio is available, not for one clip alone."
    )
    if adapt == "speaker":
        reasons = details.get("fallback_reasons") or {}
        text += (
            f" {len(details.get('speakers', {}))} speakers had their own statistics; {details.get('fallback_to_corpus_clips', 0)} clips got the "
            f"corpus statistics instead ({reasons.get('no_speaker', 0)} with no speaker parsed from the file name, "
            f"{reasons.get('speaker_has_too_few_clips', 0)} whose speaker has fewer than {details.get('min_clips')} clips)."
        )
    if details.get("training_statistics_clips"):
        text += f" Too few clips to adapt: {details['training_statistics_clips']} clips kept the training statistics."
    return text


def render_report(metrics: Mapping) -> str:
    """Markdown tables for a model card: overall, per class, per speaker, confusion matrix."""
    restricted = metrics["restricted"]
    lines = [
        f"## Cross-corpus evaluation: `{Path(str(metrics['data_dir'])).name}`",
        "",
        f"Model `{metrics['model']}`, {metrics['n']} clips scored from `{metrics['data_dir']}`"
        f" ({len(metrics['unreadable'])} unreadable, {len(metrics['skipped_folders'])} folders skipped)."
        " **Open**: argmax over all model labels (a class the corpus lacks counts as wrong)."
        f" **Restricted**: argmax over the classes present ({', '.join(restricted['labels'])}).",
        "",
        adaptation_sentence(metrics),
        "",
        *_table(
            ["Scoring", "Accuracy (95% CI)", "Macro-F1 (95% CI)", "UAR", "n"],
            [
                [
                    f"Open ({len(metrics['labels'])} labels)",
                    f"{metrics['accuracy']:.3f} ({_ci(metrics['ci95']['accuracy'])})",
                    f"{metrics['macro_f1']:.3f} ({_ci(metrics['ci95']['macro_f1'])})",
                    f"{metrics['uar']:.3f}",
                    metrics["n"],
                ],
                [
                    f"Restricted ({len(restricted['labels'])} labels)",
                    f"{restricted['accuracy']:.3f} ({_ci(restricted['ci95']['accuracy'])})",
                    f"{restricted['macro_f1']:.3f} ({_ci(restricted['ci95']['macro_f1'])})",
                    f"{restricted['uar']:.3f}",
                    restricted["n"],
                ],
            ],
        ),
        "",
        "### Per class (open)",
        "",
        *_table(
            ["Class", "Precision", "Recall", "F1", "Support"],
            [
                # Recall and F1 of a class the corpus lacks are undefined, not 0.
                [label, f"{row['precision']:.3f}", *([f"{row['recall']:.3f}", f"{row['f1']:.3f}"] if row["support"] else ["–", "–"]), row["support"]]
                for label, row in metrics["per_class"].items()
            ],
        ),
        "",
        "### Per speaker",
        "",
        *_table(
            ["Speaker", "n", "Accuracy (open)", "Accuracy (restricted)", "UAR (open)"],
            [
                [speaker, row["n"], f"{row['accuracy']:.3f}", f"{row['restricted_accuracy']:.3f}", f"{row['uar']:.3f}"]
                for speaker, row in metrics["per_speaker"].items()
            ],
        ),
        "",
        "### Confusion matrix (open; rows = true, columns = predicted)",
        "",
        *_table(["true \\ predicted", *metrics["labels"]], [[label, *row] for label, row in zip(metrics["labels"], metrics["confusion_matrix"])]),
    ]
    lines += _robustness_report(metrics)
    if metrics["skipped_folders"]:
        lines += ["", "Skipped folders: " + "; ".join(f"`{entry['folder']}` ({entry['files']} files: {entry['reason']})" for entry in metrics["skipped_folders"]) + "."]
    if metrics["unreadable"]:
        lines += ["", f"Unreadable files ({len(metrics['unreadable'])}): " + "; ".join(f"`{Path(entry['path']).name}`" for entry in metrics["unreadable"]) + "."]
    return "\n".join(lines) + "\n"


def write_outputs(output_dir: Path, metrics: Mapping, inference: InferenceResult, labels: Sequence[str], open_pred: Sequence[str], restricted_pred: Sequence[str]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    write_predictions_csv(output_dir / PREDICTIONS_FILE, inference.clips, inference.probabilities, labels, open_pred, restricted_pred)
    write_confusion_csv(output_dir / CONFUSION_CSV_FILE, metrics["confusion_matrix"], labels)
    title = f"{Path(str(metrics['model'])).name} on {Path(str(metrics['data_dir'])).name}: accuracy {metrics['accuracy']:.3f} (n={metrics['n']})"
    plot_confusion_matrix(output_dir / CONFUSION_PNG_FILE, metrics["confusion_matrix"], labels, title)
    if metrics.get("coverage"):
        write_coverage_csv(output_dir / COVERAGE_CSV_FILE, metrics["coverage"])
        plot_coverage(output_dir / COVERAGE_PNG_FILE, metrics["coverage"], metrics["confidence_threshold"], title)
    (output_dir / REPORT_FILE).write_text(render_report(metrics))


# -- the whole run ------------------------------------------------------------------------------
def evaluate_corpus(
    classifier: Classifier,
    data_dir: str | Path,
    output_dir: str | Path,
    label_map: Mapping[str, str] | None = None,
    exclude_labels: Iterable[str] = DEFAULT_EXCLUDED_LABELS,
    speakers: set[str] | None = None,
    batch_size: int = 8,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: bool = True,
    started_at: float | None = None,
    quality: QualityConfig | None = QualityConfig(),
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    snr_db: Sequence[float] = (),
    noise_seed: int = 0,
    adapt: str = "none",
) -> dict:
    """Select, score and write every output; returns the metrics.json content.

    ``quality``: the gate whose verdicts are reported (``None``: not run). ``snr_db``: also score
    with white noise at each SNR (``noise_robustness``). ``adapt``: ``none``, ``corpus`` or
    ``speaker`` (see :func:`run_inference`; recorded as ``adapt`` and ``adaptation``).

    ``started_at`` (a ``time.perf_counter()`` value) lets the caller include model loading in ``wall_time_s``.
    """
    started_at = time.perf_counter() if started_at is None else started_at
    check_mode(adapt)
    if adapt != "none" and not getattr(classifier, "supports_adaptation", False):
        raise AdaptationUnsupportedError(
            f"--adapt {adapt}: {classifier.name} has no utterance embedding with swappable statistics; only models with one "
            "(WhisperSer) can adapt. Use --adapt none."
        )
    exclude_labels = list(exclude_labels)
    labels = list(classifier.labels)
    selection = select_clips(data_dir, labels, label_map=label_map, exclude_labels=exclude_labels, speakers=speakers)
    logger.info(
        "%d clips in %d classes (%s) from %s", len(selection.clips), len(selection.label_mapping),
        ", ".join(f"{folder}->{label}" for folder, label in selection.label_mapping.items()), selection.root,
    )
    inference = run_inference(classifier, selection.clips, batch_size=batch_size, progress=progress, quality=quality, adapt=adapt)
    if not inference.clips:
        raise CorpusError(f"None of the {len(selection.clips)} clips could be read; first error: {inference.unreadable[0]['reason']}")
    y_true = [clip.label for clip in inference.clips]
    metrics = score_predictions(y_true, inference.probabilities, labels, n_resamples=n_resamples, seed=seed)
    open_pred = open_predictions(inference.probabilities, labels)
    restricted_pred = restricted_predictions(inference.probabilities, labels, metrics["restricted"]["labels"])
    metrics.update(
        model=classifier.name,
        backend=getattr(classifier, "backend", None),  # how forward ran (torch / onnx ...), when the classifier says
        data_dir=str(data_dir),
        class_root=str(selection.root),
        label_mapping=selection.label_mapping,
        per_speaker=per_speaker_scores([clip.speaker for clip in inference.clips], y_true, open_pred, restricted_pred, labels),
        speaker_counts=dict(Counter(clip.speaker or UNKNOWN_SPEAKER for clip in inference.clips)),
        speakers_filter=sorted(speakers) if speakers is not None else None,
        dropped_by_speaker_filter=selection.dropped_by_speaker_filter,
        exclude_labels=exclude_labels,
        excluded_counts=selection.excluded_counts,
        unreadable=inference.unreadable,
        skipped_folders=selection.skipped_folders,
        batch_size=batch_size,
        bootstrap_resamples=n_resamples,
        inference_s=round(inference.inference_s, 3),
        adapt=adapt,
        adaptation=inference.adaptation.to_dict() if inference.adaptation is not None else None,
    )
    correct = [predicted == true for predicted, true in zip(open_pred, y_true)]
    metrics["confidence_threshold"] = confidence_threshold
    metrics["coverage"] = coverage_curve(inference.probabilities.max(axis=1), correct)
    if inference.quality_codes is not None:
        metrics["quality_gate"] = quality_gate_summary(inference.clips, inference.quality_codes, correct, quality)
        logger.info("Quality gate would refuse %d of %d clips: %s", metrics["quality_gate"]["n_refused"],
                    len(inference.clips), metrics["quality_gate"]["by_reason"])
    if snr_db:
        metrics["noise_robustness"] = noise_robustness(
            classifier, inference.clips, snr_db, inference.probabilities, labels, batch_size, noise_seed, progress, adapt
        )
    metrics["wall_time_s"] = round(time.perf_counter() - started_at, 3)
    write_outputs(Path(output_dir), metrics, inference, labels, open_pred, restricted_pred)
    return metrics
