"""python -m ser.predict --adapt corpus|speaker: two passes, the statistics of all files or of each speaker."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import synth_clip, write_clip

from ser import predict
from ser.audio.loader import load_audio
from ser.batch.adapted import adaptation_report_path, speakers_for
from ser.core.statistics import EmbeddingStatistics
from ser.inference.predictor import EmotionClassifier


@pytest.fixture(scope="module")
def classifier(tiny_whisper_ser_dir) -> EmotionClassifier:
    return EmotionClassifier.from_pretrained(tiny_whisper_ser_dir, backend="torch")


@pytest.fixture(scope="module")
def two_voices(tmp_path_factory):
    """Ten clips by 'anna' (in anna/, RAVDESS actor 1) and ten by 'ben' (ben/, actor 2): the minimum for own statistics."""
    root = tmp_path_factory.mktemp("voices")
    paths = []
    for speaker, offset in (("anna", 0), ("ben", 3)):
        for index in range(10):
            samples = synth_clip((index + offset) % 6, seed=100 * offset + index, duration_s=0.8 + 0.05 * index)
            # RAVDESS-style names: actor 1 for anna, 2 for ben
            name = f"03-01-0{1 + index % 6}-01-0{1 + index // 6}-01-{1 if speaker == 'anna' else 2:02d}.wav"
            paths.append(str(write_clip(root / speaker / name, samples)))
    return root, paths


def _rows(path) -> dict[str, dict]:
    return {row["path"]: row for row in csv.DictReader(path.open())}


def _probabilities(row: dict, labels) -> np.ndarray:
    return np.array([float(row[label]) for label in labels])


def test_speaker_adaptation_uses_each_speakers_own_statistics(tiny_whisper_ser_dir, two_voices, tmp_path, classifier):
    root, paths = two_voices
    output = tmp_path / "preds.csv"
    common = ["--model", str(tiny_whisper_ser_dir), "--inputs", str(root), "--backend", "torch", "--quality_check", "false", "--batch_size", "4"]
    assert predict.main([*common, "--output", str(output), "--adapt", "speaker"]) == 0
    rows = _rows(output)
    assert sorted(rows) == sorted(paths)
    for speaker_paths in (paths[:10], paths[10:]):
        waveforms = [load_audio(path) for path in speaker_paths]
        statistics = EmbeddingStatistics.of(classifier.embed_batch(waveforms))
        expected = classifier.predict_proba(waveforms, statistics)
        got = np.stack([_probabilities(rows[path], classifier.labels) for path in speaker_paths])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    report = json.loads(adaptation_report_path(output).read_text())
    assert report["adapt"] == "speaker" and report["speakers"] == {"ravdess:1": 10, "ravdess:2": 10}
    assert report["fallback_to_corpus_clips"] == 0 and report["uses_labels"] is False

    # Corpus: one set of statistics over all twenty.
    corpus_output = tmp_path / "corpus.csv"
    assert predict.main([*common, "--output", str(corpus_output), "--adapt", "corpus"]) == 0
    waveforms = [load_audio(path) for path in paths]
    expected = classifier.predict_proba(waveforms, EmbeddingStatistics.of(classifier.embed_batch(waveforms)))
    corpus_rows = _rows(corpus_output)
    np.testing.assert_allclose(np.stack([_probabilities(corpus_rows[path], classifier.labels) for path in paths]), expected, atol=1e-5)

    # Resuming writes nothing twice.
    assert predict.main([*common, "--output", str(output), "--adapt", "speaker"]) == 0
    assert len(list(csv.DictReader(output.open()))) == len(paths)


def test_speaker_from_parent_folder_and_from_a_csv_column(two_voices, tmp_path):
    root, paths = two_voices
    assert speakers_for(paths, "parent") == ["anna"] * 10 + ["ben"] * 10
    assert speakers_for(paths, "filename") == ["ravdess:1"] * 10 + ["ravdess:2"] * 10
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "who"])
        writer.writerows([[path, "" if index == 0 else f"s{index % 2}"] for index, path in enumerate(paths)])
    by_column = speakers_for(paths, "column:who", listing)
    assert by_column[0] is None and by_column[1:3] == ["s1", "s0"]
    with pytest.raises(ValueError, match="has no column 'speaker'"):
        speakers_for(paths, "column:speaker", listing)
    with pytest.raises(ValueError, match="filename, parent, column:NAME"):
        speakers_for(paths, "folder")


def test_adapt_is_refused_clearly_where_it_cannot_run(tiny_whisper_ser_dir, tiny_tdnn_dir, two_voices, tmp_path, capsys):
    root, _ = two_voices
    base = ["--inputs", str(root), "--output", str(tmp_path / "p.csv"), "--quality_check", "false"]
    assert predict.main(["--model", str(tiny_whisper_ser_dir), *base, "--adapt", "corpus", "--engine", "ray"]) == 2
    assert "--adapt corpus runs two passes over all the files in one process: use --engine local" in capsys.readouterr().err
    assert predict.main(["--model", str(tiny_whisper_ser_dir), *base, "--adapt", "corpus", "--num_shards", "2", "--shard_index", "0"]) == 2
    assert "needs every file in one run" in capsys.readouterr().err
    assert predict.main(["--model", str(tiny_tdnn_dir), *base, "--adapt", "speaker", "--backend", "torch"]) == 2
    assert "only models with one (WhisperSer) can adapt" in capsys.readouterr().err
