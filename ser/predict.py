"""Batch prediction: many audio files -> one CSV of labels and probabilities.

    python -m ser.predict --model models/ser-ravdess --inputs clips/ --output preds.csv
    python -m ser.predict --inputs filelist.txt --output preds.csv --shard_index 0 --num_shards 4

``--inputs`` is a folder (searched recursively for audio files) or a text file with one path per
line. The CSV has ``path,label,confidence,uncertain,quality`` and one probability column per class:
``uncertain`` is the app's confidence rule (``ser.quality.decide``) and ``quality`` the problems the
app's quality gate finds (``ser.quality.assess_quality``: codes such as ``no_speech``, joined by
``;``, empty when the clip is usable). Every decodable file is still scored, so the columns say
which answers the app would have refused or flagged without losing them. Runs on the
fast backend (``--backend`` / ``$SER_BACKEND``), decodes the next batch while the model runs,
appends after every batch and skips paths already in the CSV, so an interrupted run resumes where
it stopped. Files that cannot be used are listed in ``<output>.errors.csv`` instead of stopping the run.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import AudioError, load_audio
from .backends import BACKEND_ENV_VAR, BACKENDS
from .predictor import EmotionClassifier
from .quality import DEFAULT_CONFIDENCE_THRESHOLD, QualityConfig, assess_quality, decide

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".webm", ".m4a", ".aac")
ERROR_COLUMNS = ("path", "error", "message")


@dataclass
class PredictArguments:
    inputs: str = field(metadata={"help": "A folder (searched recursively for audio) or a text file with one audio path per line."})
    output: str = field(default="predictions.csv", metadata={"help": "CSV to write; appended to (and resumed from) if it exists."})
    model: str | None = field(default=None, metadata={"help": "Model folder or hub id. Default: $SER_MODEL, else the bundled model."})
    backend: str | None = field(
        default=None, metadata={"help": f"Serving backend: {', '.join(BACKENDS)}. Default: ${BACKEND_ENV_VAR}, else the fastest."}
    )
    batch_size: int = field(default=16, metadata={"help": "Files decoded and classified together."})
    errors: str | None = field(default=None, metadata={"help": "CSV listing files that failed. Default: <output>.errors.csv."})
    shard_index: int | None = field(
        default=None, metadata={"help": "This machine's shard, 0..num_shards-1 (default: $RANK, as set by accelerate/torchrun, else 0)."}
    )
    num_shards: int | None = field(
        default=None, metadata={"help": "Machines sharing the file list (default: $WORLD_SIZE, else 1). Shards write <output>.shard<i>of<n>.csv."}
    )
    max_duration_s: float | None = field(default=None, metadata={"help": "List longer files as errors instead of scoring them."})
    decode_workers: int = field(default=2, metadata={"help": "Threads decoding audio while the model runs."})
    confidence_threshold: float = field(
        default=DEFAULT_CONFIDENCE_THRESHOLD, metadata={"help": "Top probability below this is marked uncertain (the app's rule)."}
    )
    quality_check: bool = field(
        default=True, metadata={"help": "Run the app's quality gate (VAD, level, clipping) on every file and fill the quality column."}
    )


def list_inputs(inputs: str | os.PathLike) -> list[str]:
    """Audio files under a folder (sorted), or the paths listed in a text file (in order, deduplicated)."""
    source = Path(inputs)
    if source.is_dir():
        return sorted(str(path) for path in source.rglob("*") if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES)
    if source.is_file():
        lines = (line.strip() for line in source.read_text().splitlines())
        return list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
    raise FileNotFoundError(f"--inputs {inputs}: no such folder or file list.")


def shard(paths: Sequence[str], shard_index: int, num_shards: int) -> list[str]:
    """Every ``num_shards``-th path starting at ``shard_index``: disjoint shards that cover the list."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"Need 0 <= shard_index < num_shards, got shard_index={shard_index}, num_shards={num_shards}.")
    return list(paths[shard_index::num_shards])


def shard_output_path(output: Path, shard_index: int, num_shards: int) -> Path:
    if num_shards == 1:
        return output
    return output.with_name(f"{output.stem}.shard{shard_index}of{num_shards}{output.suffix}")


def read_done(path: Path, expected_header: Sequence[str] | None = None) -> set[str]:
    """Paths already in a CSV written by an earlier (possibly interrupted) run."""
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if expected_header is not None and header is not None and list(header) != list(expected_header):
            raise ValueError(
                f"{path} has columns {header}, but this model writes {list(expected_header)}: "
                "use another --output (it was written by a different model)."
            )
        return {row[0] for row in reader if row}


class _AppendingCsv:
    """A CSV opened for appending, header written once, flushed after each batch."""

    def __init__(self, path: Path, header: Sequence[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        is_new = not path.is_file() or path.stat().st_size == 0
        self.path = path
        self.handle = path.open("a", newline="")
        self.writer = csv.writer(self.handle)
        if is_new:
            self.writer.writerow(header)

    def write(self, rows: list[list]) -> None:
        self.writer.writerows(rows)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


#: The app's gate without its length limit: long files are scored whole here (``--max_duration_s`` refuses them).
BATCH_QUALITY_CONFIG = QualityConfig(max_duration_s=None)


@dataclass(frozen=True)
class _Decoded:
    audio: np.ndarray
    quality: str  # ";"-joined problem codes, "" when usable or not checked


def _decode(path: str, sample_rate: int, max_duration_s: float | None, quality_check: bool) -> _Decoded | AudioError:
    """Decode (and check) in a worker thread, so both overlap with the model."""
    try:
        audio = load_audio(path, sample_rate, max_duration_s)
    except AudioError as error:
        return error
    if not quality_check:
        return _Decoded(audio, "")
    return _Decoded(audio, ";".join(assess_quality(audio, sample_rate, BATCH_QUALITY_CONFIG).codes))


def _batches(paths: list[str], batch_size: int) -> Iterator[list[str]]:
    for start in range(0, len(paths), batch_size):
        yield paths[start : start + batch_size]


def _classify(classifier: EmotionClassifier, items: list[tuple[str, np.ndarray]]) -> tuple[list, list[list[str]]]:
    """Classify a batch; if the batch fails (e.g. a clip shorter than the model's receptive field),
    retry clip by clip so one bad file costs one error row, not the batch."""
    if not items:
        return [], []
    try:
        return list(zip([path for path, _ in items], classifier.classify_batch([audio for _, audio in items]))), []
    except Exception:  # noqa: BLE001  (backends raise their own types; each clip is retried below)
        if len(items) == 1:
            path, _ = items[0]
            error = sys.exc_info()[1]
            return [], [[path, type(error).__name__, str(error).strip().splitlines()[0] if str(error).strip() else ""]]
    predictions, bad = [], []
    for item in items:
        found, failed = _classify(classifier, [item])
        predictions += found
        bad += failed
    return predictions, bad


def predict_files(
    classifier: EmotionClassifier,
    paths: list[str],
    output: Path,
    errors_output: Path,
    batch_size: int = 16,
    max_duration_s: float | None = None,
    decode_workers: int = 2,
    progress: bool = True,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    quality_check: bool = True,
) -> tuple[int, int, int]:
    """Classify ``paths`` into ``output`` (resuming); returns (written, skipped as done, failed)."""
    from tqdm.auto import tqdm

    header = ["path", "label", "confidence", "uncertain", "quality", *classifier.labels]
    done = read_done(output, header) | read_done(errors_output)
    todo = [path for path in paths if path not in done]
    skipped = len(paths) - len(todo)
    if skipped:
        logger.info("Resuming: %d of %d files are already in %s or %s", skipped, len(paths), output, errors_output)
    predictions_csv = _AppendingCsv(output, header)
    errors_csv: _AppendingCsv | None = None
    written = failed = 0
    batches = list(_batches(todo, max(1, batch_size)))
    try:
        with ThreadPoolExecutor(max_workers=max(1, decode_workers)) as pool, tqdm(
            total=len(todo), unit="file", disable=not progress, desc="Classifying"
        ) as bar:

            def submit(batch: list[str]) -> list[Future]:
                return [pool.submit(_decode, path, classifier.sample_rate, max_duration_s, quality_check) for path in batch]

            pending = submit(batches[0]) if batches else []
            for index, batch in enumerate(batches):
                decoded = [future.result() for future in pending]
                # Decode the next batch while this one runs through the model.
                pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
                good = {path: item for path, item in zip(batch, decoded) if not isinstance(item, AudioError)}
                bad = [[path, type(item).__name__, str(item)] for path, item in zip(batch, decoded) if isinstance(item, AudioError)]
                predictions, unusable = _classify(classifier, [(path, item.audio) for path, item in good.items()])
                bad += unusable
                rows = []
                for path, prediction in predictions:
                    answer = decide(prediction.probabilities, confidence_threshold)
                    rows.append(
                        [path, answer.label, f"{answer.confidence:.6f}", str(answer.uncertain).lower(), good[path].quality]
                        + [f"{answer.probabilities[label]:.6f}" for label in classifier.labels]
                    )
                predictions_csv.write(rows)
                if bad:
                    if errors_csv is None:
                        errors_csv = _AppendingCsv(errors_output, ERROR_COLUMNS)
                    errors_csv.write(bad)
                    for path, kind, message in bad:
                        logger.warning("Skipped %s (%s): %s", path, kind, message)
                written += len(rows)
                failed += len(bad)
                bar.update(len(batch))
    finally:
        predictions_csv.close()
        if errors_csv is not None:
            errors_csv.close()
    return written, skipped, failed


def main(argv: Sequence[str] | None = None) -> int:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    (args,) = HfArgumentParser(PredictArguments).parse_args_into_dataclasses(args=argv)
    num_shards = args.num_shards if args.num_shards is not None else int(os.environ.get("WORLD_SIZE", 1))
    shard_index = args.shard_index if args.shard_index is not None else int(os.environ.get("RANK", 0))
    try:
        paths = shard(list_inputs(args.inputs), shard_index, num_shards)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not 0.0 <= args.confidence_threshold <= 1.0:
        print(f"error: --confidence_threshold must be between 0 and 1, got {args.confidence_threshold}", file=sys.stderr)
        return 2
    output = shard_output_path(Path(args.output), shard_index, num_shards)
    errors_output = Path(args.errors) if args.errors else output.with_name(output.stem + ".errors.csv")
    classifier = EmotionClassifier.from_pretrained(args.model, backend=args.backend)
    try:
        written, skipped, failed = predict_files(
            classifier,
            paths,
            output,
            errors_output,
            args.batch_size,
            args.max_duration_s,
            args.decode_workers,
            confidence_threshold=args.confidence_threshold,
            quality_check=args.quality_check,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = f"{written} predictions written to {output} ({skipped} already there); {failed} files failed"
    print(summary + (f", listed in {errors_output}" if failed else ""))
    return 1 if failed and not written and not skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
