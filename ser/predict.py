"""Batch prediction: many audio files -> one table (CSV, or Parquet) of labels and probabilities.

    python -m ser.predict --model models/ser-ravdess --inputs clips/ --output preds.csv
    python -m ser.predict --inputs filelist.txt --output preds.csv --shard_index 0 --num_shards 4
    python -m ser.predict --engine ray --ray_address auto --inputs 'archive/**/*.flac' --output preds.parquet

``--inputs`` is a folder (searched recursively for audio files), a glob pattern, a CSV or Parquet
file with a ``path`` column, or a text file with one path per line. The output has
``path,label,confidence,uncertain,quality`` and one probability column per class: ``uncertain`` is
the app's confidence rule (``ser.quality.decide``) and ``quality`` the problems the app's quality
gate finds (``ser.quality.assess_quality``: codes such as ``no_speech``, joined by ``;``, empty when
the clip is usable). Every decodable file is still scored, so the columns say which answers the app
would have refused or flagged without losing them. Runs on the fast backend (``--backend`` /
``$SER_BACKEND``), writes after every batch and skips paths already in the output, so an
interrupted run resumes where it stopped. Files that cannot be used are listed in
``<output>.errors.csv`` instead of stopping the run.

Two engines produce the same rows: ``local`` (this process; the next batch is decoded in threads
while the model runs) and ``ray`` (``ser.predict_ray``: an actor pool on a Ray cluster, each actor
loading the model once). Both decode, gate, score and format through the functions below.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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
PARQUET_SUFFIXES = (".parquet", ".pq")
ERROR_COLUMNS = ("path", "error", "message")
ENGINES = ("local", "ray")
PARQUET_INSTALL_HINT = "pip install -r requirements-ray.txt (or pip install pyarrow)"


@dataclass
class PredictArguments:
    inputs: str = field(
        metadata={
            "help": "A folder (searched recursively for audio), a glob ('clips/**/*.wav', quoted), a CSV or Parquet "
            "file with a 'path' column, or a text file with one audio path per line."
        }
    )
    output: str = field(
        default="predictions.csv",
        metadata={"help": "Table to write: CSV, or Parquet if it ends in .parquet; appended to (and resumed from) if it exists."},
    )
    model: str | None = field(default=None, metadata={"help": "Model folder or hub id. Default: $SER_MODEL, else the bundled model."})
    backend: str | None = field(
        default=None, metadata={"help": f"Serving backend: {', '.join(BACKENDS)}. Default: ${BACKEND_ENV_VAR}, else the fastest."}
    )
    engine: str = field(
        default="local",
        metadata={"help": "local: this process. ray: an actor pool on Ray Data (pip install -r requirements-ray.txt).", "choices": ENGINES},
    )
    ray_address: str | None = field(
        default=None, metadata={"help": "--engine ray: cluster to join ('auto', or HEAD:6379). Default: start Ray on this machine."}
    )
    ray_workers: int | None = field(
        default=None, metadata={"help": "--engine ray: actors, each loading the model once. Default: the cluster's CPUs / --ray_cpus_per_worker."}
    )
    ray_cpus_per_worker: int = field(
        default=1, metadata={"help": "--engine ray: CPUs reserved per actor; also its torch / ONNX Runtime threads."}
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
    decode_workers: int = field(default=2, metadata={"help": "--engine local: threads decoding audio while the model runs."})
    confidence_threshold: float = field(
        default=DEFAULT_CONFIDENCE_THRESHOLD, metadata={"help": "Top probability below this is marked uncertain (the app's rule)."}
    )
    quality_check: bool = field(
        default=True, metadata={"help": "Run the app's quality gate (VAD, level, clipping) on every file and fill the quality column."}
    )
    adapt: str = field(
        default="none",
        metadata={
            "help": "Standardisation statistics: none (the training set's, each file on its own), corpus (computed from all the "
            "files), speaker (per speaker, see --speaker_from; files without one get the corpus's). Two passes: embed all, then "
            "classify. --engine local only; models with an embedding (WhisperSer) only.",
            "choices": ["none", "corpus", "speaker"],
        },
    )
    speaker_from: str = field(
        default="filename",
        metadata={
            "help": "--adapt speaker: filename (parsed from corpus names: RAVDESS, CREMA-D, TESS, SAVEE, AESDD, EMOVO), "
            "parent (the file's folder) or column:NAME (a column of the --inputs CSV / Parquet list)."
        },
    )


# -- inputs ----------------------------------------------------------------------------------------
def _import_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise ValueError(f"Parquet files need pyarrow, which is not installed: {PARQUET_INSTALL_HINT}.") from error
    return pyarrow


def is_parquet(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def _listed_paths(source: Path) -> list[str]:
    """The ``path`` column of a CSV or Parquet list, or the lines of a text list (``#`` comments dropped)."""
    if is_parquet(source):
        pyarrow = _import_pyarrow()
        names = pyarrow.parquet.read_schema(source).names
        if "path" not in names:
            raise ValueError(f"--inputs {source}: a Parquet list needs a 'path' column; it has {names}.")
        return [str(path) for path in pyarrow.parquet.read_table(source, columns=["path"]).column("path").to_pylist() if path]
    if source.suffix.lower() == ".csv":
        with source.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if "path" not in (reader.fieldnames or []):
                raise ValueError(f"--inputs {source}: a CSV list needs a header with a 'path' column; it has {reader.fieldnames}.")
            return [row["path"].strip() for row in reader if (row["path"] or "").strip()]
    lines = (line.strip() for line in source.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def list_inputs(inputs: str | os.PathLike) -> list[str]:
    """Audio files under a folder or matching a glob (sorted), or the paths a list file names (in
    order, deduplicated)."""
    source = Path(inputs)
    if source.is_dir():
        return sorted(str(path) for path in source.rglob("*") if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES)
    if source.is_file():
        return list(dict.fromkeys(_listed_paths(source)))
    if glob.has_magic(str(inputs)):
        matches = sorted(
            path for path in glob.glob(str(inputs), recursive=True) if Path(path).suffix.lower() in AUDIO_SUFFIXES and Path(path).is_file()
        )
        if not matches:
            raise FileNotFoundError(f"--inputs {inputs}: the pattern matches no audio files ({', '.join(AUDIO_SUFFIXES)}).")
        return matches
    raise FileNotFoundError(f"--inputs {inputs}: no such folder, file list or glob pattern.")


def shard(paths: Sequence[str], shard_index: int, num_shards: int) -> list[str]:
    """Every ``num_shards``-th path starting at ``shard_index``: disjoint shards that cover the list."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"Need 0 <= shard_index < num_shards, got shard_index={shard_index}, num_shards={num_shards}.")
    return list(paths[shard_index::num_shards])


def shard_output_path(output: Path, shard_index: int, num_shards: int) -> Path:
    if num_shards == 1:
        return output
    return output.with_name(f"{output.stem}.shard{shard_index}of{num_shards}{output.suffix}")


def errors_path_for(output: Path) -> Path:
    return output.with_name(output.stem + ".errors.csv")


# -- outputs ---------------------------------------------------------------------------------------
def prediction_columns(labels: Sequence[str]) -> list[str]:
    return ["path", "label", "confidence", "uncertain", "quality", *labels]


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


def _csv_cells(row: Sequence) -> list[str]:
    """A prediction row as CSV text: probabilities with 6 decimals, ``uncertain`` as true/false."""
    path, label, confidence, uncertain, quality, *probabilities = row
    return [path, label, f"{confidence:.6f}", str(bool(uncertain)).lower(), quality, *(f"{value:.6f}" for value in probabilities)]


class _CsvPredictions:
    def __init__(self, path: Path, header: Sequence[str]):
        self.path, self.header = path, list(header)
        self._csv: _AppendingCsv | None = None

    def done_paths(self) -> set[str]:
        return read_done(self.path, self.header)

    def write(self, rows: list[list]) -> None:
        if self._csv is None:
            self._csv = _AppendingCsv(self.path, self.header)
        self._csv.write([_csv_cells(row) for row in rows])

    def close(self) -> None:
        if self._csv is None:  # still create the file (header only), as a run that wrote rows would
            self._csv = _AppendingCsv(self.path, self.header)
        self._csv.close()


class _ParquetPredictions:
    """A Parquet file cannot be appended to, so every batch becomes a part file in ``<output>.parts/``
    (an interrupted run keeps them and the next one resumes from them); ``close`` merges the earlier
    output and the parts into ``<output>``. Same columns as the CSV, probabilities rounded the same."""

    def __init__(self, path: Path, header: Sequence[str]):
        self.pyarrow = _import_pyarrow()
        self.path, self.header = path, list(header)
        self.parts_dir = path.with_name(path.name + ".parts")
        self._parts_written = 0
        string, real = self.pyarrow.string(), self.pyarrow.float64()
        types = [string, string, real, self.pyarrow.bool_(), string] + [real] * (len(header) - 5)
        self.schema = self.pyarrow.schema(list(zip(self.header, types)))

    def _tables(self) -> list[Path]:
        parts = sorted(self.parts_dir.glob("part-*.parquet")) if self.parts_dir.is_dir() else []
        return ([self.path] if self.path.is_file() else []) + parts

    def done_paths(self) -> set[str]:
        done: set[str] = set()
        for table_path in self._tables():
            names = self.pyarrow.parquet.read_schema(table_path).names
            if names != self.header:
                raise ValueError(
                    f"{table_path} has columns {names}, but this model writes {self.header}: "
                    "use another --output (it was written by a different model)."
                )
            done.update(self.pyarrow.parquet.read_table(table_path, columns=["path"]).column("path").to_pylist())
        return done

    def write(self, rows: list[list]) -> None:
        if not rows:
            return
        columns = [list(values) for values in zip(*rows)]
        columns[3] = [bool(value) for value in columns[3]]
        for index in (2, *range(5, len(columns))):  # confidence and the probabilities
            columns[index] = [round(float(value), 6) for value in columns[index]]
        arrays = [self.pyarrow.array(values, type=kind) for values, kind in zip(columns, self.schema.types)]
        table = self.pyarrow.Table.from_arrays(arrays, schema=self.schema)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._parts_written += 1  # with the clock: names sort in writing order, across runs too
        part = self.parts_dir / f"part-{time.time_ns():020d}-{self._parts_written:06d}.parquet"
        scratch = part.with_suffix(".tmp")
        self.pyarrow.parquet.write_table(table, scratch)
        os.replace(scratch, part)  # a part is either whole or absent, even if the run is killed

    def close(self) -> None:
        tables = self._tables()
        if tables == [self.path]:
            return
        merged = self.pyarrow.concat_tables([self.pyarrow.parquet.read_table(path) for path in tables] or [self.schema.empty_table()])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_name(self.path.name + ".tmp")
        self.pyarrow.parquet.write_table(merged, scratch)
        os.replace(scratch, self.path)
        if self.parts_dir.is_dir():
            shutil.rmtree(self.parts_dir)


@dataclass
class ScoredBatch:
    """What one batch of files turned into: prediction rows (values in :func:`prediction_columns`
    order: floats unformatted, ``uncertain`` a bool) and error rows (``path, error, message``)."""

    rows: list[list] = field(default_factory=list)
    errors: list[list[str]] = field(default_factory=list)


class ResultWriter:
    """Where both engines put their results: predictions in ``output`` (CSV, or Parquet by suffix),
    unusable files in the errors CSV (created on the first one). Knows what a resumed run can skip."""

    def __init__(self, output: Path, errors_output: Path, labels: Sequence[str]):
        self.output, self.errors_output = output, errors_output
        header = prediction_columns(labels)
        self._predictions = _ParquetPredictions(output, header) if is_parquet(output) else _CsvPredictions(output, header)
        self._errors: _AppendingCsv | None = None
        self.written = self.failed = 0

    def pending(self, paths: Sequence[str]) -> tuple[list[str], int]:
        """(paths not yet in the output or the errors file, how many were); raises ValueError if the
        output was written by a model with other labels."""
        done = self._predictions.done_paths() | read_done(self.errors_output)
        todo = [path for path in paths if path not in done]
        skipped = len(paths) - len(todo)
        if skipped:
            logger.info("Resuming: %d of %d files are already in %s or %s", skipped, len(paths), self.output, self.errors_output)
        return todo, skipped

    def write(self, batch: ScoredBatch) -> None:
        if batch.rows:
            self._predictions.write(batch.rows)
        if batch.errors:
            if self._errors is None:
                self._errors = _AppendingCsv(self.errors_output, ERROR_COLUMNS)
            self._errors.write(batch.errors)
            for path, kind, message in batch.errors:
                logger.warning("Skipped %s (%s): %s", path, kind, message)
        self.written += len(batch.rows)
        self.failed += len(batch.errors)

    def close(self) -> None:
        self._predictions.close()
        if self._errors is not None:
            self._errors.close()


# -- decoding and scoring (shared by both engines) -------------------------------------------------
#: The app's gate without its length limit: long files are scored whole here (``--max_duration_s`` refuses them).
BATCH_QUALITY_CONFIG = QualityConfig(max_duration_s=None)


@dataclass(frozen=True)
class Decoded:
    audio: np.ndarray
    quality: str  # ";"-joined problem codes, "" when usable or not checked


def decode_file(path: str, sample_rate: int, max_duration_s: float | None, quality_check: bool) -> Decoded | AudioError:
    """Decode and gate one file; the error instead of raising it, so one bad file costs one error row."""
    try:
        audio = load_audio(path, sample_rate, max_duration_s)
    except AudioError as error:
        return error
    if not quality_check:
        return Decoded(audio, "")
    return Decoded(audio, ";".join(assess_quality(audio, sample_rate, BATCH_QUALITY_CONFIG).codes))


def split_batches(paths: list[str], batch_size: int) -> Iterator[list[str]]:
    """The model batches both engines use: padding makes a clip's probabilities depend slightly on its
    batch-mates, so the same cut gives the same rows."""
    for start in range(0, len(paths), batch_size):
        yield paths[start : start + batch_size]


def decoded_batches(
    paths: list[str], sample_rate: int, batch_size: int, max_duration_s: float | None, quality_check: bool, decode_workers: int = 2
) -> Iterator[tuple[list[str], list[Decoded | AudioError]]]:
    """``(batch, decoded files)`` for each model batch (:func:`split_batches`), the next batch decoding
    in ``decode_workers`` threads while the caller runs this one through the model."""
    batches = list(split_batches(paths, max(1, batch_size)))
    with ThreadPoolExecutor(max_workers=max(1, decode_workers)) as pool:

        def submit(batch: list[str]) -> list[Future]:
            return [pool.submit(decode_file, path, sample_rate, max_duration_s, quality_check) for path in batch]

        pending = submit(batches[0]) if batches else []
        for index, batch in enumerate(batches):
            decoded = [future.result() for future in pending]
            pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
            yield batch, decoded


def result_row(path: str, probabilities: dict[str, float], quality: str, labels: Sequence[str], confidence_threshold: float) -> list:
    """One output row: path, label, confidence, uncertain, quality, then each class's probability."""
    answer = decide(probabilities, confidence_threshold)
    return [path, answer.label, answer.confidence, answer.uncertain, quality] + [answer.probabilities[label] for label in labels]


def per_clip_on_failure(
    run: Callable[[list[np.ndarray]], Sequence], items: list[tuple[str, np.ndarray]], fatal: tuple[type[Exception], ...] = ()
) -> tuple[list, list[list[str]]]:
    """``(path, run's result)`` pairs for a batch, and error rows; if the batch fails (e.g. a clip
    shorter than the model's receptive field), clip by clip, so one bad file costs one error row.
    ``fatal`` errors are about the model, not a file: they stop the run."""
    if not items:
        return [], []
    try:
        return list(zip([path for path, _ in items], run([audio for _, audio in items]))), []
    except fatal:
        raise
    except Exception as error:  # noqa: BLE001  (backends raise their own types; each clip is retried below)
        if len(items) == 1:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return [], [[items[0][0], type(error).__name__, message]]
    results, bad = [], []
    for item in items:
        found, failed = per_clip_on_failure(run, [item], fatal)
        results += found
        bad += failed
    return results, bad


def _classify(classifier: EmotionClassifier, items: list[tuple[str, np.ndarray]]) -> tuple[list, list[list[str]]]:
    return per_clip_on_failure(classifier.classify_batch, items)


def score_decoded(
    classifier: EmotionClassifier, paths: Sequence[str], decoded: Sequence[Decoded | AudioError], confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
) -> ScoredBatch:
    """Rows for decoded files (``decoded[i]`` belongs to ``paths[i]``); decode failures become error rows."""
    good = {path: item for path, item in zip(paths, decoded) if not isinstance(item, AudioError)}
    errors = [[path, type(item).__name__, str(item)] for path, item in zip(paths, decoded) if isinstance(item, AudioError)]
    predictions, unusable = _classify(classifier, [(path, item.audio) for path, item in good.items()])
    rows = [
        result_row(path, prediction.probabilities, good[path].quality, classifier.labels, confidence_threshold)
        for path, prediction in predictions
    ]
    return ScoredBatch(rows, errors + unusable)


def score_files(
    classifier: EmotionClassifier,
    paths: Sequence[str],
    max_duration_s: float | None = None,
    quality_check: bool = True,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    base_dir: str | None = None,
) -> ScoredBatch:
    """Decode, gate and score ``paths`` one after the other (a Ray worker's batch). Relative paths are
    read from ``base_dir`` (the driver's working directory) but reported as given."""
    decoded = [decode_file(os.path.join(base_dir, path) if base_dir else path, classifier.sample_rate, max_duration_s, quality_check) for path in paths]
    return score_decoded(classifier, paths, decoded, confidence_threshold)


# -- the local engine ------------------------------------------------------------------------------
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
    """Classify ``paths`` into ``output`` (resuming) in this process; returns (written, skipped as done, failed)."""
    from tqdm.auto import tqdm

    results = ResultWriter(output, errors_output, classifier.labels)
    todo, skipped = results.pending(paths)
    try:
        with tqdm(total=len(todo), unit="file", disable=not progress, desc="Classifying") as bar:
            for batch, decoded in decoded_batches(todo, classifier.sample_rate, batch_size, max_duration_s, quality_check, decode_workers):
                results.write(score_decoded(classifier, batch, decoded, confidence_threshold))
                bar.update(len(batch))
    finally:
        results.close()
    return results.written, skipped, results.failed


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
    if args.engine != "ray" and (args.ray_address or args.ray_workers):
        print("error: --ray_address and --ray_workers need --engine ray.", file=sys.stderr)
        return 2
    if args.adapt != "none":
        from .predict_adapted import check_speaker_source, speakers_for

        # The statistics are computed over all the files (or a speaker's): one process must see them all.
        if args.engine == "ray":
            print(f"error: --adapt {args.adapt} runs two passes over all the files in one process: use --engine local.", file=sys.stderr)
            return 2
        if num_shards > 1:
            print(f"error: --adapt {args.adapt} needs every file in one run, not shard {shard_index} of {num_shards}.", file=sys.stderr)
            return 2
        try:
            speakers = speakers_for(paths, check_speaker_source(args.speaker_from), args.inputs) if args.adapt == "speaker" else None
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    output = shard_output_path(Path(args.output), shard_index, num_shards)
    errors_output = Path(args.errors) if args.errors else errors_path_for(output)
    started = time.perf_counter()
    try:
        if args.engine == "ray":
            from .predict_ray import RayUnavailableError, predict_files_ray

            try:
                written, skipped, failed = predict_files_ray(
                    args.model,
                    paths,
                    output,
                    errors_output,
                    backend=args.backend,
                    batch_size=args.batch_size,
                    max_duration_s=args.max_duration_s,
                    confidence_threshold=args.confidence_threshold,
                    quality_check=args.quality_check,
                    num_workers=args.ray_workers,
                    cpus_per_worker=args.ray_cpus_per_worker,
                    ray_address=args.ray_address,
                )
            except RayUnavailableError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
        elif args.adapt != "none":
            from .adaptation import AdaptationUnsupportedError
            from .predict_adapted import predict_files_adapted

            classifier = EmotionClassifier.from_pretrained(args.model, backend=args.backend)
            try:
                written, skipped, failed = predict_files_adapted(
                    classifier, paths, output, errors_output, args.adapt, speakers, args.batch_size, args.max_duration_s,
                    args.decode_workers, confidence_threshold=args.confidence_threshold, quality_check=args.quality_check,
                )
            except AdaptationUnsupportedError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
        else:
            classifier = EmotionClassifier.from_pretrained(args.model, backend=args.backend)
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
    elapsed = time.perf_counter() - started
    if written or failed:
        logger.info("%s engine: %d files in %.1f s (%.2f files/s, model loading included)", args.engine, written + failed, elapsed, (written + failed) / elapsed)
    summary = f"{written} predictions written to {output} ({skipped} already there); {failed} files failed"
    print(summary + (f", listed in {errors_output}" if failed else ""))
    return 1 if failed and not written and not skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
