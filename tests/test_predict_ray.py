"""``python -m ser.predict --engine ray`` on a local 2-CPU Ray runtime: the local engine's rows,
errors file and resume rule. Ray (and each actor pool's start) is slow, so the runtime is started
once for the module and the runs are shared between the checks."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from conftest import synth_clip, write_clip

ray = pytest.importorskip("ray")

from ser.batch.ray_engine import init_ray, predict_files_ray  # noqa: E402
from ser.predict import main  # noqa: E402

BATCH_SIZE = 2


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def ray_runtime():
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    init_ray(num_cpus=2)  # a local runtime: no dashboard, no usage reporting
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray_clips")
    # Different lengths, so batches are padded and a clip's batch-mates matter.
    for index, duration_s in enumerate((1.0, 1.6, 0.8, 2.2, 1.3)):
        write_clip(root / f"speaker{index % 2}" / f"clip{index}.wav", synth_clip(index, seed=index, duration_s=duration_s))
    (root / "broken.wav").write_bytes(b"RIFF....not audio at all")
    (root / "empty.flac").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def local_and_ray_runs(ray_runtime, tiny_cnn_dir, clips_dir, tmp_path_factory):
    """The same folder through both engines (torch backend, one thread per model, same batch size)."""
    import torch

    out = tmp_path_factory.mktemp("ray_runs")
    common = ["--model", str(tiny_cnn_dir), "--inputs", str(clips_dir), "--backend", "torch", "--batch_size", str(BATCH_SIZE)]
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SER_NUM_THREADS", "1")  # what each Ray actor gets with 1 CPU: same float sums
        try:
            assert main(common + ["--output", str(out / "local.csv")]) == 0
        finally:
            torch.set_num_threads(threads)
    assert main(common + ["--output", str(out / "ray.csv"), "--engine", "ray", "--ray_workers", "2"]) == 0
    return out


def test_ray_rows_are_the_local_engines(local_and_ray_runs, clips_dir):
    local, remote = _read(local_and_ray_runs / "local.csv"), _read(local_and_ray_runs / "ray.csv")
    assert sorted(row["path"] for row in remote) == sorted(str(path) for path in clips_dir.rglob("clip*.wav"))
    assert list(remote[0]) == list(local[0])
    key = lambda row: row["path"]  # noqa: E731
    assert sorted(remote, key=key) == sorted(local, key=key)  # every column, to the last printed digit


def test_ray_lists_unreadable_files(local_and_ray_runs):
    errors = _read(local_and_ray_runs / "ray.errors.csv")
    assert sorted(Path(row["path"]).name for row in errors) == ["broken.wav", "empty.flac"]
    assert {row["error"] for row in errors} == {"AudioDecodeError", "EmptyAudioError"}
    key = lambda row: row["path"]  # noqa: E731
    assert sorted(errors, key=key) == sorted(_read(local_and_ray_runs / "local.errors.csv"), key=key)


def test_ray_rerun_skips_finished_files(local_and_ray_runs, tiny_cnn_dir, clips_dir, tmp_path):
    """An interrupted Ray run (one row missing) resumes: only that file is scored, the bad ones are not retried."""
    paths = sorted(str(path) for path in clips_dir.rglob("*") if path.is_file())
    # Drop the last file: it is alone in the last batch, so re-scoring it alone gives the same row.
    assert len(paths) % BATCH_SIZE == 1
    rows = [row for row in _read(local_and_ray_runs / "ray.csv") if row["path"] != paths[-1]]
    (dropped,) = [row for row in _read(local_and_ray_runs / "ray.csv") if row["path"] == paths[-1]]
    output = tmp_path / "preds.csv"
    shutil.copy(local_and_ray_runs / "ray.errors.csv", tmp_path / "preds.errors.csv")
    with output.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dropped))
        writer.writeheader()
        writer.writerows(rows)
    arguments = dict(backend="torch", batch_size=BATCH_SIZE, num_workers=1, progress=False)
    written, skipped, failed = predict_files_ray(str(tiny_cnn_dir), paths, output, tmp_path / "preds.errors.csv", **arguments)
    assert (written, skipped, failed) == (1, len(paths) - 1, 0)
    resumed = _read(output)
    assert resumed == rows + [dropped]
    assert len(_read(tmp_path / "preds.errors.csv")) == 2  # the bad files were not retried

    # Nothing left to do: nothing is scored or written.
    assert predict_files_ray(str(tiny_cnn_dir), paths, output, tmp_path / "preds.errors.csv", **arguments) == (0, len(paths), 0)
    assert _read(output) == resumed
