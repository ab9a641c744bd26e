"""What an evaluation writes: metrics.json, predictions.csv, confusion_matrix.{csv,png},
coverage.{csv,png} and report.md."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ser.data.corpus import Clip
from ser.evaluation.inference import InferenceResult
from ser.evaluation.scoring import UNKNOWN_SPEAKER

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_CSV_FILE = "confusion_matrix.csv"
CONFUSION_PNG_FILE = "confusion_matrix.png"
REPORT_FILE = "report.md"
COVERAGE_CSV_FILE = "coverage.csv"
COVERAGE_PNG_FILE = "coverage.png"

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


