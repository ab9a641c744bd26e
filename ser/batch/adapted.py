"""``python -m ser.predict --adapt corpus|speaker``: batch prediction adapted to the files' own statistics.

Two passes (``ser.inference.adaptation``): embed every listed file (decoded in threads while the model runs,
gated like the plain run), then compute the statistics (all files: ``corpus``; per speaker:
``speaker``) and classify each file's embedding with them. The rows have the plain run's columns;
which statistics were used is written beside the output (``<output>.adaptation.json``).

The speaker of a file (``--speaker_from``): ``filename`` (parsed from known corpus names, as
``ser.data.corpus.parse_speaker``: RAVDESS, CREMA-D, TESS, SAVEE, AESDD, EMOVO), ``parent`` (the
folder the file is in) or ``column:NAME`` (that column of the ``--inputs`` CSV / Parquet list).
A file without one gets the corpus statistics, and such files are counted.

Resuming: the statistics need every file, so an interrupted run embeds all listed files again and
writes the rows still missing.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ser.audio.loader import AudioError
from ser.batch.io import ResultWriter, ScoredBatch, _import_pyarrow, is_parquet
from ser.batch.scoring import decoded_batches, per_clip_on_failure, result_row
from ser.data.corpus import parse_speaker
from ser.inference.adaptation import (
    AdaptationUnsupportedError,
    adapted_probabilities,
    check_mode,
    plan_for,
)
from ser.inference.quality import DEFAULT_CONFIDENCE_THRESHOLD

logger = logging.getLogger(__name__)

SPEAKER_SOURCES = ("filename", "parent", "column:NAME")


def check_speaker_source(spec: str) -> str:
    if spec in ("filename", "parent") or (spec.startswith("column:") and spec[len("column:") :].strip()):
        return spec
    raise ValueError(f"--speaker_from {spec!r}: use one of filename, parent, column:NAME (a column of the --inputs CSV / Parquet list).")


def _column_of_list(inputs: str | os.PathLike, column: str) -> dict[str, str | None]:
    """path -> the ``column`` value of a CSV / Parquet input list (empty cells: ``None``)."""
    source = Path(inputs)
    if not source.is_file() or not (is_parquet(source) or source.suffix.lower() == ".csv"):
        raise ValueError(f"--speaker_from column:{column} needs --inputs to be a CSV or Parquet list with that column; got {inputs}.")
    if is_parquet(source):
        pyarrow = _import_pyarrow()
        names = pyarrow.parquet.read_schema(source).names
        if column not in names:
            raise ValueError(f"--speaker_from column:{column}: {source} has no column {column!r}; it has {names}.")
        table = pyarrow.parquet.read_table(source, columns=["path", column])
        pairs = zip(table.column("path").to_pylist(), table.column(column).to_pylist())
    else:
        with source.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if column not in (reader.fieldnames or []):
                raise ValueError(f"--speaker_from column:{column}: {source} has no column {column!r}; it has {reader.fieldnames}.")
            pairs = [(row["path"], row[column]) for row in reader]
    return {str(path).strip(): (str(value).strip() or None) if value is not None else None for path, value in pairs if path}


def speakers_for(paths: Sequence[str], speaker_from: str, inputs: str | os.PathLike | None = None) -> list[str | None]:
    """The speaker of each path (``None``: unknown) by ``--speaker_from``."""
    check_speaker_source(speaker_from)
    if speaker_from == "filename":
        parsed = [parse_speaker(Path(path).name) for path in paths]
        return [f"{speaker.corpus}:{speaker.speaker_id}" if speaker else None for speaker in parsed]
    if speaker_from == "parent":
        return [Path(path).parent.name or None for path in paths]
    column = _column_of_list(inputs, speaker_from[len("column:") :].strip())
    return [column.get(path) for path in paths]


def adaptation_report_path(output: Path) -> Path:
    return output.with_name(output.name + ".adaptation.json")


def _embed(classifier, items: list[tuple[str, np.ndarray]]) -> tuple[list[tuple[str, np.ndarray]], list[list[str]]]:
    """Embed a batch (clip by clip where it fails); a model that cannot adapt stops the run."""
    return per_clip_on_failure(classifier.embed_batch, items, fatal=(AdaptationUnsupportedError,))


def predict_files_adapted(
    classifier,
    paths: list[str],
    output: Path,
    errors_output: Path,
    adapt: str,
    speakers: Sequence[str | None] | None = None,
    batch_size: int = 16,
    max_duration_s: float | None = None,
    decode_workers: int = 2,
    progress: bool = True,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    quality_check: bool = True,
) -> tuple[int, int, int]:
    """Like ``ser.batch.local.predict_files`` (same rows, resumable), standardised with the files' own
    statistics (``adapt``: ``corpus`` or ``speaker``; ``speakers[i]`` is ``paths[i]``'s).
    Returns (written, skipped as done, failed)."""
    from tqdm.auto import tqdm


    if check_mode(adapt) == "none":
        raise ValueError("predict_files_adapted needs adapt='corpus' or 'speaker'; use ser.batch.local.predict_files for none.")
    if not classifier.supports_adaptation:
        raise AdaptationUnsupportedError(
            f"--adapt {adapt}: {classifier.name} has no utterance embedding with swappable statistics; only models with one "
            "(WhisperSer) can adapt. Use --adapt none."
        )
    speaker_of = dict(zip(paths, speakers)) if speakers is not None else {}
    results = ResultWriter(output, errors_output, classifier.labels)
    todo, skipped = results.pending(paths)
    pending = set(todo)
    embedded: dict[str, np.ndarray] = {}
    quality_of: dict[str, str] = {}
    errors: list[list[str]] = []
    try:
        # Pass 1: every listed file, also those already written (the statistics are over all of them).
        with tqdm(total=len(paths), unit="file", disable=not progress, desc="Embedding") as bar:
            for batch, decoded in decoded_batches(paths, classifier.sample_rate, batch_size, max_duration_s, quality_check, decode_workers):
                items = []
                for path, item in zip(batch, decoded):
                    if isinstance(item, AudioError):
                        errors.append([path, type(item).__name__, str(item)])
                    else:
                        items.append((path, item.audio))
                        quality_of[path] = item.quality
                found, failed = _embed(classifier, items)
                embedded.update(found)
                errors += failed
                bar.update(len(batch))
        # Pass 2: the statistics, then each file classified with its own.
        order = [path for path in paths if path in embedded]
        embeddings = np.stack([embedded[path] for path in order]) if order else np.zeros((0, *classifier.embedding_shape), np.float32)
        plan = plan_for(classifier, embeddings, adapt, [speaker_of.get(path) for path in order])
        probabilities = adapted_probabilities(classifier, embeddings, plan)
        rows = [
            result_row(path, dict(zip(classifier.labels, row.tolist())), quality_of[path], classifier.labels, confidence_threshold)
            for path, row in zip(order, probabilities)
            if path in pending
        ]
        results.write(ScoredBatch(rows, [error for error in errors if error[0] in pending]))
    finally:
        results.close()
    report = {**plan.to_dict(), "speaker_of_clip": {path: speaker_of.get(path) for path in order} if adapt == "speaker" else None}
    adaptation_report_path(output).write_text(json.dumps(report, indent=2) + "\n")
    logger.info(
        "Adapted (%s) %d of %d files%s; statistics used: %s", adapt, plan.adapted_clips, len(order),
        f", {plan.fallback_clips} got the corpus statistics instead of a speaker's ({plan.fallback})" if adapt == "speaker" else "",
        adaptation_report_path(output),
    )
    return results.written, skipped, results.failed
