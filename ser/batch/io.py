"""Batch inputs and outputs: which files to score (folder, glob, CSV / Parquet / text list, shards)
and where rows go (CSV or Parquet, an errors CSV, resuming). Shared by every engine."""

from __future__ import annotations

import csv
import glob
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".webm", ".m4a", ".aac")
PARQUET_SUFFIXES = (".parquet", ".pq")
ERROR_COLUMNS = ("path", "error", "message")
PARQUET_INSTALL_HINT = "pip install -r requirements-ray.txt (or pip install pyarrow)"


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


