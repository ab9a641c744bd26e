"""Batch prediction: many audio files -> one table (CSV, or Parquet) of labels and probabilities.

    python -m ser.predict --model models/ser-multicorpus --inputs clips/ --output preds.csv
    python -m ser.predict --inputs filelist.txt --output preds.csv --shard_index 0 --num_shards 4
    python -m ser.predict --engine ray --ray_address auto --inputs 'archive/**/*.flac' --output preds.parquet

``--inputs`` is a folder (searched recursively for audio files), a glob pattern, a CSV or Parquet
file with a ``path`` column, or a text file with one path per line. The output has
``path,label,confidence,uncertain,quality`` and one probability column per class: ``uncertain`` is
the app's confidence rule (``ser.inference.quality.decide``) and ``quality`` the problems the app's quality
gate finds (``ser.inference.quality.assess_quality``: codes such as ``no_speech``, joined by ``;``, empty when
the clip is usable). Every decodable file is still scored, so the columns say which answers the app
would have refused or flagged without losing them. Runs on the fast backend (``--backend`` /
``$SER_BACKEND``), writes after every batch and skips paths already in the output, so an
interrupted run resumes where it stopped. Files that cannot be used are listed in
``<output>.errors.csv`` instead of stopping the run.

Two engines produce the same rows: ``local`` (this process; the next batch is decoded in threads
while the model runs) and ``ray`` (``ser.batch.ray_engine``: an actor pool on a Ray cluster, each actor
loading the model once). Both read inputs and write rows through ``ser.batch.io`` and decode, gate
and score through ``ser.batch.scoring``; this module only parses the arguments and picks the engine.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ser.batch.io import errors_path_for, list_inputs, shard, shard_output_path
from ser.batch.local import predict_files
from ser.inference.backends import BACKEND_ENV_VAR, BACKENDS
from ser.inference.predictor import EmotionClassifier
from ser.inference.quality import DEFAULT_CONFIDENCE_THRESHOLD

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")


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
        from ser.batch.adapted import check_speaker_source, speakers_for

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
            from ser.batch.ray_engine import RayUnavailableError, predict_files_ray

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
            from ser.batch.adapted import predict_files_adapted
            from ser.inference.adaptation import AdaptationUnsupportedError

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
