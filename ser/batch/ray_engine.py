"""``python -m ser.predict --engine ray``: the same batch prediction on a Ray cluster.

The driver (this process) lists the inputs, drops what an earlier run finished (the local engine's
resume rule) and writes every block of results as it arrives, through the local engine's
:class:`ser.batch.io.ResultWriter`. The work runs on an actor pool (Ray Data ``map_batches`` with a
callable class): each actor loads the model once, then decodes, gates and scores its batches with
:func:`ser.batch.scoring.score_files`, so the rows are the local engine's rows.

Ray is optional (``pip install -r requirements-ray.txt``) and imported only in here, when this
engine runs. Every node needs the project's requirements, the model (a path readable on every node,
or a hub id) and the audio files at the same paths (a shared filesystem); the ``ser`` package itself
is shipped to the workers with the job (:func:`init_ray`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ser.batch.io import ResultWriter, ScoredBatch
from ser.batch.scoring import score_files, split_batches
from ser.inference.backends import THREADS_ENV_VAR
from ser.inference.quality import DEFAULT_CONFIDENCE_THRESHOLD

logger = logging.getLogger(__name__)

RAY_INSTALL_HINT = "pip install -r requirements-ray.txt"
#: Driver settings the workers need too: a cluster's workers do not inherit the driver's environment.
FORWARDED_ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "SER_CACHE_DIR", "SER_BACKEND")
#: Input blocks per actor: enough that a slow block does not leave the other actors idle at the end,
#: few enough that scheduling stays cheap for long file lists.
BLOCKS_PER_WORKER = 8


class RayUnavailableError(RuntimeError):
    """``--engine ray`` was asked for but Ray is not installed."""


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise RayUnavailableError(f"--engine ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from error
    return ray


class BatchScorer:
    """One per Ray actor: loads the model once, then turns batches of paths into result columns."""

    def __init__(
        self,
        model: str,
        backend: str | None,
        threads: int,
        max_duration_s: float | None,
        quality_check: bool,
        confidence_threshold: float,
        base_dir: str,
    ):
        # Each actor owns ``threads`` CPUs: more torch / ONNX Runtime threads would fight the other actors.
        os.environ[THREADS_ENV_VAR] = str(threads)
        import torch

        from ser.inference.predictor import EmotionClassifier

        torch.set_num_threads(threads)
        self.classifier = EmotionClassifier.from_pretrained(model, backend=backend)
        self.max_duration_s = max_duration_s
        self.quality_check = quality_check
        self.confidence_threshold = confidence_threshold
        self.base_dir = base_dir

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``batch["paths"]``: one row per model batch (see :func:`_run_pool`)."""
        scored = ScoredBatch()
        for paths in batch["paths"]:
            one = score_files(self.classifier, [str(path) for path in paths], self.max_duration_s, self.quality_check, self.confidence_threshold, self.base_dir)
            scored.rows += one.rows
            scored.errors += one.errors
        return to_columns(scored, len(self.classifier.labels))


def to_columns(scored: ScoredBatch, num_labels: int) -> dict[str, np.ndarray]:
    """A scored batch as one row per file (``error`` empty for predictions), the shape Ray Data moves."""
    rows, errors = scored.rows, scored.errors
    missing = [""] * len(errors)
    return {
        "path": np.asarray([row[0] for row in rows] + [error[0] for error in errors], dtype=np.str_),
        "error": np.asarray([""] * len(rows) + [error[1] for error in errors], dtype=np.str_),
        "message": np.asarray([""] * len(rows) + [error[2] for error in errors], dtype=np.str_),
        "label": np.asarray([row[1] for row in rows] + missing, dtype=np.str_),
        "confidence": np.asarray([row[2] for row in rows] + [math.nan] * len(errors), dtype=np.float64),
        "uncertain": np.asarray([row[3] for row in rows] + [False] * len(errors), dtype=bool),
        "quality": np.asarray([row[4] for row in rows] + missing, dtype=np.str_),
        "probabilities": np.asarray(
            [row[5:] for row in rows] + [[math.nan] * num_labels] * len(errors), dtype=np.float64
        ).reshape(len(rows) + len(errors), num_labels),
    }


def from_columns(columns: dict[str, np.ndarray]) -> ScoredBatch:
    """Inverse of :func:`to_columns` (on the driver)."""
    scored = ScoredBatch()
    for index, path in enumerate(columns["path"]):
        if columns["error"][index]:
            scored.errors.append([str(path), str(columns["error"][index]), str(columns["message"][index])])
            continue
        scored.rows.append(
            [str(path), str(columns["label"][index]), float(columns["confidence"][index]), bool(columns["uncertain"][index]), str(columns["quality"][index])]
            + [float(value) for value in columns["probabilities"][index]]
        )
    return scored


def model_labels(model: str) -> list[str]:
    """The model's labels in output order, from its config alone (the driver does not load the weights)."""
    from transformers import AutoConfig

    from ser import models as _register_models  # noqa: F401  (the package's own architectures)

    id2label = AutoConfig.from_pretrained(model).id2label
    return [id2label[index] for index in sorted(int(key) for key in id2label)]


def _forwarded_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV_VARS if os.environ.get(name)}


def init_ray(address: str | None = None, **init_kwargs):
    """``ray.init`` for this engine: joins ``address`` (``auto``, ``HEAD:6379``) or starts Ray on this
    machine without the dashboard or usage reporting; ships the ``ser`` package and the settings in
    :data:`FORWARDED_ENV_VARS` to every worker. ``init_kwargs`` go to ``ray.init`` (e.g. ``num_cpus``)."""
    ray = import_ray()
    # Ray accepts a local folder to upload only for the whole job, not per actor.
    runtime_env = {"py_modules": [str(Path(__file__).resolve().parents[1])], "env_vars": _forwarded_env()}
    if address:
        return ray.init(address=address, runtime_env=runtime_env, **init_kwargs)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local runtime reports nothing to anyone
    init_kwargs.setdefault("include_dashboard", False)
    return ray.init(runtime_env=runtime_env, **init_kwargs)


def predict_files_ray(
    model: str | None,
    paths: Sequence[str],
    output: Path,
    errors_output: Path,
    backend: str | None = None,
    batch_size: int = 16,
    max_duration_s: float | None = None,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    quality_check: bool = True,
    num_workers: int | None = None,
    cpus_per_worker: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
) -> tuple[int, int, int]:
    """Classify ``paths`` into ``output`` (resuming) on a Ray actor pool; returns (written, skipped as done, failed)."""
    ray = import_ray()
    from ser.inference.predictor import resolve_model_path

    model = resolve_model_path(model)
    if Path(model).exists():  # a local folder: the workers run elsewhere (and in another directory)
        model = str(Path(model).resolve())
    if cpus_per_worker < 1 or (num_workers is not None and num_workers < 1):
        raise ValueError(f"--ray_workers and --ray_cpus_per_worker must be at least 1, got {num_workers} and {cpus_per_worker}.")
    results = ResultWriter(output, errors_output, model_labels(model))
    try:
        todo, skipped = results.pending(list(paths))
        if todo:
            # A runtime the caller started (a test, a notebook, the benchmark) is used and left running.
            started_ray = not ray.is_initialized()
            if started_ray:
                init_ray(ray_address)
            try:
                _run_pool(
                    ray, results, todo, model, backend, batch_size, max_duration_s, confidence_threshold, quality_check,
                    num_workers, cpus_per_worker, progress,
                )  # fmt: skip
            finally:
                if started_ray:
                    ray.shutdown()
    finally:
        results.close()
    return results.written, skipped, results.failed


def _run_pool(
    ray,
    results: ResultWriter,
    todo: list[str],
    model: str,
    backend: str | None,
    batch_size: int,
    max_duration_s: float | None,
    confidence_threshold: float,
    quality_check: bool,
    num_workers: int | None,
    cpus_per_worker: int,
    progress: bool,
) -> None:
    cluster_cpus = int(ray.cluster_resources().get("CPU", 0))
    workers = num_workers or max(1, cluster_cpus // cpus_per_worker)
    if workers * cpus_per_worker > cluster_cpus:
        logger.warning(
            "%d workers x %d CPUs need %d CPUs but the cluster has %d now: the pool waits for more nodes "
            "(lower --ray_workers or --ray_cpus_per_worker on a fixed cluster).",
            workers, cpus_per_worker, workers * cpus_per_worker, cluster_cpus,
        )  # fmt: skip
    logger.info(
        "Ray: %d files on %d workers x %d CPUs (cluster: %d CPUs), batches of %d, backend %s",
        len(todo), workers, cpus_per_worker, cluster_cpus, batch_size, backend or "automatic",
    )  # fmt: skip
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    # One input row per model batch, cut as the local engine cuts them (so the rows are its rows).
    model_batches = [{"paths": paths} for paths in split_batches(todo, max(1, batch_size))]
    num_blocks = max(1, min(len(model_batches), workers * BLOCKS_PER_WORKER))
    env_vars = _forwarded_env()
    env_vars[THREADS_ENV_VAR] = str(cpus_per_worker)  # read by torch / OpenMP when the worker starts
    scored = ray.data.from_items(model_batches, override_num_blocks=num_blocks).map_batches(
        BatchScorer,
        fn_constructor_kwargs={
            "model": model,
            "backend": backend,
            "threads": cpus_per_worker,
            "max_duration_s": max_duration_s,
            "quality_check": quality_check,
            "confidence_threshold": confidence_threshold,
            "base_dir": os.getcwd(),
        },
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        runtime_env={"env_vars": env_vars},
    )
    for columns in scored.iter_batches(batch_size=None, batch_format="numpy"):
        results.write(from_columns(columns))  # written as it arrives: an interrupted run resumes from here
