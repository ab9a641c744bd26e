"""``python -m ser.predict``: CSV of predictions, resumable, bad files listed, shardable."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, synth_clip, write_clip

from ser.batch.io import list_inputs, shard, shard_output_path
from ser.inference.predictor import EmotionClassifier
from ser.inference.quality import DEFAULT_CONFIDENCE_THRESHOLD
from ser.predict import main


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def clips_dir(tmp_path) -> Path:
    root = tmp_path / "clips"
    for index in range(5):
        write_clip(root / f"speaker{index % 2}" / f"clip{index}.wav", synth_clip(index % 6, seed=index))
    (root / "broken.wav").write_bytes(b"RIFF....not audio at all")
    (root / "empty.flac").write_bytes(b"")
    (root / "notes.txt").write_text("not audio, not listed")
    return root


def test_predicts_folder_to_csv_and_lists_bad_files(tiny_cnn_dir, clips_dir, tmp_path):
    output = tmp_path / "preds.csv"
    code = main(["--model", str(tiny_cnn_dir), "--inputs", str(clips_dir), "--output", str(output), "--batch_size", "2", "--backend", "onnx"])
    assert code == 0
    rows = _read(output)
    classifier = EmotionClassifier.from_pretrained(tiny_cnn_dir, backend="torch")
    assert list(rows[0]) == ["path", "label", "confidence", "uncertain", "quality", *classifier.labels]
    good = sorted(str(path) for path in clips_dir.rglob("clip*.wav"))
    assert sorted(row["path"] for row in rows) == good
    for row in rows:
        probabilities = np.array([float(row[label]) for label in classifier.labels])
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == classifier.labels[int(probabilities.argmax())]
        assert float(row["confidence"]) == pytest.approx(probabilities.max(), abs=1e-6)
        assert row["uncertain"] == str(float(row["confidence"]) < DEFAULT_CONFIDENCE_THRESHOLD).lower()
        # Same answer as the torch reference, file by file.
        expected = classifier.classify_file(row["path"])
        np.testing.assert_allclose(probabilities, [expected.probabilities[label] for label in classifier.labels], atol=1e-4)
    errors = _read(tmp_path / "preds.errors.csv")
    assert sorted(Path(row["path"]).name for row in errors) == ["broken.wav", "empty.flac"]
    assert {row["error"] for row in errors} == {"AudioDecodeError", "EmptyAudioError"}


def test_resumes_without_duplicates(tiny_cnn_dir, clips_dir, tmp_path):
    output = tmp_path / "preds.csv"
    arguments = ["--model", str(tiny_cnn_dir), "--inputs", str(clips_dir), "--output", str(output), "--backend", "onnx"]
    assert main(arguments) == 0
    first = _read(output)
    assert main(arguments) == 0
    assert _read(output) == first
    assert len(_read(tmp_path / "preds.errors.csv")) == 2  # bad files are not retried either
    new_clip = write_clip(clips_dir / "late.wav", synth_clip(3, seed=99))
    assert main(arguments) == 0
    rows = _read(output)
    assert rows[: len(first)] == first and [row["path"] for row in rows[len(first) :]] == [str(new_clip)]


def test_file_list_and_shards(tiny_cnn_dir, clips_dir, tmp_path):
    paths = sorted(str(path) for path in clips_dir.rglob("clip*.wav"))
    file_list = tmp_path / "list.txt"
    file_list.write_text("# clips to score\n" + "\n".join(paths + [paths[0]]) + "\n\n")
    assert list_inputs(file_list) == paths  # comments, blanks and repeats dropped, order kept
    shards = [shard(paths, index, 2) for index in range(2)]
    assert sorted(shards[0] + shards[1]) == paths and not set(shards[0]) & set(shards[1])
    with pytest.raises(ValueError):
        shard(paths, 2, 2)

    output = tmp_path / "preds.csv"
    for index in range(2):
        arguments = ["--model", str(tiny_cnn_dir), "--inputs", str(file_list), "--output", str(output), "--backend", "onnx"]
        assert main(arguments + ["--shard_index", str(index), "--num_shards", "2"]) == 0
    outputs = [shard_output_path(output, index, 2) for index in range(2)]
    assert [path.name for path in outputs] == ["preds.shard0of2.csv", "preds.shard1of2.csv"]
    assert sorted(row["path"] for path in outputs for row in _read(path)) == paths
    assert not output.exists()


def test_refuses_csv_from_another_model(tiny_cnn_dir, clips_dir, tmp_path):
    output = tmp_path / "preds.csv"
    output.write_text("path,label,confidence,calm,excited\n")
    assert main(["--model", str(tiny_cnn_dir), "--inputs", str(clips_dir), "--output", str(output), "--backend", "onnx"]) == 2


def test_command_line(tiny_cnn_dir, clips_dir, tmp_path):
    output = tmp_path / "preds.csv"
    result = subprocess.run(
        [sys.executable, "-m", "ser.predict", "--model", str(tiny_cnn_dir), "--inputs", str(clips_dir), "--output", str(output)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "5 predictions written" in result.stdout and "2 files failed" in result.stdout
    assert len(_read(output)) == 5


def test_quality_and_uncertain_columns_follow_the_apps_rules(tiny_cnn_dir, espeak_speech, tmp_path):
    import librosa

    speech, sample_rate = espeak_speech("I told you to leave the door open.")
    speech = librosa.resample(speech, orig_sr=sample_rate, target_sr=16_000)
    root = tmp_path / "clips"
    write_clip(root / "speech.wav", speech)
    write_clip(root / "silent.wav", np.zeros(32_000, dtype=np.float32))
    write_clip(root / "clipped.wav", np.clip(speech * 50, -1, 1))
    output = tmp_path / "preds.csv"
    arguments = ["--model", str(tiny_cnn_dir), "--inputs", str(root), "--output", str(output), "--backend", "onnx"]
    # Threshold 1: every answer is uncertain (only a probability of exactly 1 is certain).
    assert main(arguments + ["--confidence_threshold", "1.0"]) == 0
    rows = {Path(row["path"]).name: row for row in _read(output)}
    assert {name: row["quality"] for name, row in rows.items()} == {"speech.wav": "", "silent.wav": "silent", "clipped.wav": "clipped"}
    assert {row["uncertain"] for row in rows.values()} == {"true"}
    # Scored all the same: the columns flag, they do not drop.
    assert all(float(row["confidence"]) > 0 for row in rows.values())

    unchecked = tmp_path / "unchecked.csv"
    assert main(arguments[:-4] + ["--output", str(unchecked), "--backend", "onnx", "--quality_check", "false", "--confidence_threshold", "0"]) == 0
    assert {(row["quality"], row["uncertain"]) for row in _read(unchecked)} == {("", "false")}
    assert main(arguments + ["--output", str(tmp_path / "x.csv"), "--confidence_threshold", "1.5"]) == 2


def test_glob_and_table_file_lists(tiny_cnn_dir, clips_dir, tmp_path, capsys):
    import pyarrow
    import pyarrow.parquet

    paths = sorted(str(path) for path in clips_dir.rglob("clip*.wav"))
    assert list_inputs(f"{clips_dir}/**/clip*") == paths
    assert list_inputs(f"{clips_dir}/*") == [str(clips_dir / "broken.wav"), str(clips_dir / "empty.flac")]  # audio suffixes only
    with pytest.raises(FileNotFoundError, match="matches no audio files"):
        list_inputs(f"{clips_dir}/*.mp3")
    listed = [paths[2], paths[0], paths[2], paths[1]]
    table_list = tmp_path / "list.csv"
    table_list.write_text("speaker,path\n" + "".join(f"s{index},{path}\n" for index, path in enumerate(listed)))
    assert list_inputs(table_list) == [paths[2], paths[0], paths[1]]  # order kept, repeats dropped
    parquet_list = tmp_path / "list.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"path": listed, "duration_s": [1.0] * 4}), parquet_list)
    assert list_inputs(parquet_list) == [paths[2], paths[0], paths[1]]

    no_path_column = tmp_path / "files.csv"
    no_path_column.write_text("file\n" + paths[0] + "\n")
    assert main(["--model", str(tiny_cnn_dir), "--inputs", str(no_path_column), "--output", str(tmp_path / "x.csv")]) == 2
    assert "needs a header with a 'path' column" in capsys.readouterr().err


def test_parquet_output_has_the_csv_rows_and_resumes(tiny_cnn_dir, clips_dir, tmp_path):
    import pyarrow.parquet

    from ser.batch.io import ResultWriter, ScoredBatch

    arguments = ["--model", str(tiny_cnn_dir), "--inputs", str(clips_dir), "--backend", "onnx"]
    assert main(arguments + ["--output", str(tmp_path / "preds.csv")]) == 0
    csv_rows = {row["path"]: row for row in _read(tmp_path / "preds.csv")}

    # An interrupted Parquet run leaves the batches it finished as part files; the next run skips them.
    output = tmp_path / "preds.parquet"
    first = csv_rows[sorted(csv_rows)[0]]
    labels = list(first)[5:]
    interrupted = ResultWriter(output, tmp_path / "preds.errors.csv", labels)
    typed = [first["path"], first["label"], float(first["confidence"]), first["uncertain"] == "true", first["quality"]]
    interrupted.write(ScoredBatch(rows=[typed + [float(first[label]) for label in labels]]))
    assert not output.exists() and len(list((tmp_path / "preds.parquet.parts").iterdir())) == 1

    assert main(arguments + ["--output", str(output)]) == 0
    assert not (tmp_path / "preds.parquet.parts").exists()
    table = pyarrow.parquet.read_table(output)
    assert table.column_names == list(first)
    assert str(table.schema.field("uncertain").type) == "bool" and str(table.schema.field("confidence").type) == "double"
    as_text = [
        {name: f"{value:.6f}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else value for name, value in row.items()}
        for row in table.to_pylist()
    ]
    assert sorted(as_text, key=lambda row: row["path"]) == [csv_rows[path] for path in sorted(csv_rows)]
    assert main(arguments + ["--output", str(output)]) == 0  # finished: nothing added
    assert pyarrow.parquet.read_table(output).num_rows == len(csv_rows)
    assert len(_read(tmp_path / "preds.errors.csv")) == 2


def test_ray_engine_without_ray_says_how_to_install(tiny_cnn_dir, clips_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: importing it raises ImportError
    arguments = ["--model", str(tiny_cnn_dir), "--inputs", str(clips_dir), "--output", str(tmp_path / "preds.csv")]
    assert main(arguments + ["--engine", "ray"]) == 2
    assert "pip install -r requirements-ray.txt" in capsys.readouterr().err
    assert main(arguments + ["--ray_address", "auto"]) == 2
    assert "need --engine ray" in capsys.readouterr().err


def test_ray_is_imported_only_inside_the_ray_code_path():
    """The Space and ser/ work without Ray: no module imports it when it is imported itself."""
    import ast

    def import_time_nodes(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue  # runs when called, not when the module is imported
            yield node
            yield from import_time_nodes(ast.iter_child_nodes(node))

    sources = sorted((REPO_ROOT / "ser").rglob("*.py")) + [REPO_ROOT / "app.py"]
    for source in sources:
        for node in import_time_nodes(ast.parse(source.read_text()).body):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(name == "ray" or name.startswith("ray.") for name in names), f"{source.name} imports {names} at import time"


def test_ray_is_optional_pinned_and_installed_by_the_test_command():
    ray_requirements = (REPO_ROOT / "requirements-ray.txt").read_text().split()
    assert any(line.startswith("ray[data]==") for line in ray_requirements)
    assert not any(line.startswith("torch") for line in ray_requirements)  # torch stays the CPU pin in requirements.txt
    space_requirements = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    assert not any(line.startswith(("ray", "-r requirements-ray")) for line in space_requirements)  # the Space does not install it
    assert "-r requirements-ray.txt" in (REPO_ROOT / "requirements-dev.txt").read_text().splitlines()
