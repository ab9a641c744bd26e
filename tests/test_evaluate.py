"""evaluate_crosslingual.py and ser.evaluation.corpus_evaluation: folder mapping, open vs restricted scoring, outputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, synth_clip, write_clip

import evaluate_crosslingual
from ser.core.labels import DEFAULT_LABELS
from ser.data.corpus import CorpusError
from ser.evaluation.scoring import score_predictions
from ser.evaluation.selection import parse_speakers, select_clips
from ser.inference import predictor

EMOVO_DIR = SHARED_DATA / "emovo"
OUTPUT_FILES = ("metrics.json", "predictions.csv", "confusion_matrix.csv", "confusion_matrix.png", "report.md")
METRICS_KEYS = {
    "accuracy", "macro_f1", "uar", "n", "labels", "confusion_matrix", "per_class", "restricted", "ci95",
    "model", "data_dir", "per_speaker", "unreadable", "skipped_folders", "wall_time_s",
}  # fmt: skip
SCORE_KEYS = {"accuracy", "macro_f1", "uar", "n", "labels", "confusion_matrix", "per_class", "ci95"}


# -- scoring on a hand-built prediction set ----------------------------------------------------
LABELS = ["angry", "happy", "neutral", "sad"]
Y_TRUE = ["angry", "angry", "angry", "happy", "happy", "sad", "sad", "sad"]
PROBABILITIES = np.array(
    [
        [0.60, 0.20, 0.10, 0.10],  # open angry   (right)  restricted angry (right)
        [0.25, 0.10, 0.50, 0.15],  # open neutral (wrong)  restricted angry (right)
        [0.10, 0.60, 0.20, 0.10],  # open happy   (wrong)  restricted happy (wrong)
        [0.10, 0.70, 0.10, 0.10],  # open happy   (right)  restricted happy (right)
        [0.10, 0.30, 0.40, 0.20],  # open neutral (wrong)  restricted happy (right)
        [0.10, 0.10, 0.10, 0.70],  # open sad     (right)  restricted sad   (right)
        [0.40, 0.10, 0.20, 0.30],  # open angry   (wrong)  restricted angry (wrong)
        [0.10, 0.20, 0.40, 0.30],  # open neutral (wrong)  restricted sad   (right)
    ]
)


def test_score_predictions_matches_hand_computed_values():
    metrics = score_predictions(Y_TRUE, PROBABILITIES, LABELS, n_resamples=200, seed=0)

    # Open: predictions angry, neutral, happy, happy, neutral, sad, angry, neutral.
    assert metrics["n"] == 8
    assert metrics["labels"] == LABELS
    assert metrics["accuracy"] == pytest.approx(3 / 8)
    assert metrics["uar"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    # F1 angry: P 1/2, R 1/3 -> 0.4; happy: P 1/2, R 1/2 -> 0.5; sad: P 1, R 1/3 -> 0.5 (neutral is absent: not averaged).
    assert metrics["macro_f1"] == pytest.approx((0.4 + 0.5 + 0.5) / 3)
    assert metrics["confusion_matrix"] == [[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 1]]
    assert metrics["per_class"]["angry"] == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4, "support": 3})
    assert metrics["per_class"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}

    # Restricted to the present classes: angry, angry, happy, happy, happy, sad, angry, sad.
    restricted = metrics["restricted"]
    assert set(restricted) == SCORE_KEYS
    assert restricted["labels"] == ["angry", "happy", "sad"]
    assert restricted["accuracy"] == pytest.approx(6 / 8)
    assert restricted["uar"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert restricted["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 4 / 5) / 3)
    assert restricted["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert restricted["per_class"]["happy"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})

    for scores in (metrics, restricted):
        for name in ("accuracy", "macro_f1"):
            low, high = scores["ci95"][name]
            assert 0.0 <= low <= high <= 1.0


def test_score_predictions_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="shape"):
        score_predictions(Y_TRUE, PROBABILITIES[:, :3], LABELS)
    with pytest.raises(ValueError, match="not model labels"):
        score_predictions(["surprised"] * 8, PROBABILITIES, LABELS)


# -- which folders are scored ------------------------------------------------------------------
@pytest.fixture
def extended_aesdd(aesdd_dir, tmp_path) -> Path:
    """conftest's AESDD copy plus a class no model has, a corrupt file and one 25 s clip (windowed)."""
    root = shutil.copytree(aesdd_dir, tmp_path / "AESDD")
    write_clip(root / "boredom" / "b01 (1).wav", synth_clip(0, seed=7))
    (root / "anger" / "a09 (2).wav").write_bytes(np.random.default_rng(0).bytes(4000))
    write_clip(root / "sadness" / "s03 (3).wav", synth_clip(5, seed=8, duration_s=25.0))
    return root


def test_select_clips_maps_folders_onto_model_labels_and_skips_the_rest(extended_aesdd):
    selection = select_clips(extended_aesdd, ["Angry", "happy", "sad"])
    assert selection.label_mapping == {"anger": "Angry", "happiness": "happy", "sadness": "sad"}
    assert {clip.label for clip in selection.clips} == {"Angry", "happy", "sad"}
    skipped = {entry["folder"]: entry for entry in selection.skipped_folders}
    assert set(skipped) == {"boredom", "disgust", "fear"}
    assert "--label_map" in skipped["boredom"]["reason"]
    assert "does not predict" in skipped["fear"]["reason"] and skipped["fear"]["files"] == 6

    mapped = select_clips(extended_aesdd, DEFAULT_LABELS, label_map={"boredom": "neutral"})
    assert mapped.label_mapping["boredom"] == "neutral"
    assert mapped.skipped_folders == []


def test_select_clips_filters_speakers_in_audio_emotions_layout(audio_emotions_dir):
    selection = select_clips(audio_emotions_dir, DEFAULT_LABELS, speakers=parse_speakers("5,06"))
    # 6 classes (surprised excluded by default) x actors 5 and 6 x 2 statements.
    assert len(selection.clips) == 24
    assert {clip.speaker for clip in selection.clips} == {"5", "6"}
    assert {clip.label for clip in selection.clips} == set(DEFAULT_LABELS)
    assert selection.excluded_counts == {"surprised": 17}
    with pytest.raises(CorpusError, match="speakers found"):
        select_clips(audio_emotions_dir, DEFAULT_LABELS, speakers={"99"})


# -- the script end to end ---------------------------------------------------------------------
def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _check_outputs(output_dir: Path, metrics: dict, model_labels: list[str]) -> list[dict[str, str]]:
    for name in OUTPUT_FILES:
        assert (output_dir / name).is_file(), name
    assert (output_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((output_dir / "metrics.json").read_text())
    assert METRICS_KEYS <= set(on_disk)
    assert set(on_disk["restricted"]) == SCORE_KEYS
    assert on_disk["labels"] == model_labels
    assert on_disk["n"] == metrics["n"]
    assert np.asarray(on_disk["confusion_matrix"]).sum() == on_disk["n"]
    assert np.asarray(on_disk["restricted"]["confusion_matrix"]).sum() == on_disk["n"]
    assert sum(row["n"] for row in on_disk["per_speaker"].values()) == on_disk["n"]
    assert on_disk["restricted"]["accuracy"] >= on_disk["accuracy"]

    rows = _read_csv(output_dir / "predictions.csv")
    assert len(rows) == on_disk["n"]
    assert list(rows[0]) == ["path", "speaker", "true", "predicted", "predicted_restricted", *(f"prob_{label}" for label in model_labels)]
    present = set(on_disk["restricted"]["labels"])
    for row in rows:
        assert row["predicted_restricted"] in present
        assert sum(float(row[f"prob_{label}"]) for label in model_labels) == pytest.approx(1.0, abs=1e-4)
        # Restricting the argmax can only turn wrong answers right, never the reverse.
        if row["predicted"] == row["true"]:
            assert row["predicted_restricted"] == row["true"]

    confusion = _read_csv(output_dir / "confusion_matrix.csv")
    assert [row["true\\predicted"] for row in confusion] == model_labels
    report = (output_dir / "report.md").read_text()
    for heading in ("| Scoring |", "### Per class", "### Per speaker", "### Confusion matrix"):
        assert heading in report
    return rows


def test_script_on_aesdd_layout(extended_aesdd, tiny_cnn_dir, tmp_path):
    output_dir = tmp_path / "eval"
    metrics = evaluate_crosslingual.main(
        ["--model", str(tiny_cnn_dir), "--data_dir", str(extended_aesdd), "--output_dir", str(output_dir),
         "--batch_size", "4", "--bootstrap_resamples", "50", "--progress", "false"]
    )  # fmt: skip
    labels = list(DEFAULT_LABELS)
    rows = _check_outputs(output_dir, metrics, labels)
    # 5 folders x 3 actors x 2 utterances + the long clip; the corrupt file is listed, not scored.
    assert metrics["n"] == 31
    assert [Path(entry["path"]).name for entry in metrics["unreadable"]] == ["a09 (2).wav"]
    assert [entry["folder"] for entry in metrics["skipped_folders"]] == ["boredom"]
    assert metrics["restricted"]["labels"] == ["angry", "disgusted", "fearful", "happy", "sad"]
    assert "neutral" not in {row["predicted_restricted"] for row in rows}
    assert metrics["per_class"]["neutral"]["support"] == 0
    assert metrics["per_speaker"].keys() == {"1", "2", "3"}
    assert metrics["per_speaker"]["3"]["n"] == 11
    assert metrics["model"] == str(tiny_cnn_dir)
    assert metrics["wall_time_s"] > 0


def test_script_on_audio_emotions_layout_with_speakers(audio_emotions_dir, tiny_wav2vec2_dir, tmp_path):
    output_dir = tmp_path / "eval"
    metrics = evaluate_crosslingual.main(
        ["--model", str(tiny_wav2vec2_dir), "--data_dir", str(audio_emotions_dir / "Emotions"), "--output_dir", str(output_dir),
         "--speakers", "05,6", "--bootstrap_resamples", "50", "--progress", "false"]
    )  # fmt: skip
    _check_outputs(output_dir, metrics, list(DEFAULT_LABELS))
    assert metrics["n"] == 24
    assert metrics["per_speaker"].keys() == {"5", "6"}
    assert metrics["restricted"]["labels"] == list(DEFAULT_LABELS)
    assert metrics["excluded_counts"] == {"surprised": 17}


def test_missing_default_model_is_a_one_line_error(aesdd_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(predictor.MODEL_ENV_VAR, raising=False)
    monkeypatch.setattr(predictor, "BUNDLED_MODEL_DIR", tmp_path / "no-model")
    with pytest.raises(SystemExit) as raised:
        evaluate_crosslingual.main(["--data_dir", str(aesdd_dir), "--output_dir", str(tmp_path / "eval")])
    message = str(raised.value.code)
    assert message.startswith("error: No model configured") and "--model" in message
    assert "\n" not in message
    assert not (tmp_path / "eval").exists()


def test_bad_label_map_and_data_dir_are_one_line_errors(aesdd_dir, tiny_cnn_dir, tmp_path):
    common = ["--model", str(tiny_cnn_dir), "--output_dir", str(tmp_path / "eval")]
    with pytest.raises(SystemExit, match="--label_map"):
        evaluate_crosslingual.main([*common, "--data_dir", str(aesdd_dir), "--label_map", "boredom"])
    with pytest.raises(SystemExit, match="does not exist"):
        evaluate_crosslingual.main([*common, "--data_dir", str(tmp_path / "missing")])


@pytest.mark.skipif(not EMOVO_DIR.is_dir(), reason="../shared/data/emovo is not present")
def test_script_on_emovo(tiny_cnn_dir, tmp_path):
    output_dir = tmp_path / "emovo"
    metrics = evaluate_crosslingual.main(
        ["--model", str(tiny_cnn_dir), "--data_dir", str(EMOVO_DIR), "--output_dir", str(output_dir),
         "--batch_size", "16", "--bootstrap_resamples", "20", "--progress", "false"]
    )  # fmt: skip
    _check_outputs(output_dir, metrics, list(DEFAULT_LABELS))
    assert metrics["n"] == 420
    assert metrics["unreadable"] == [] and metrics["skipped_folders"] == []
    assert {speaker: row["n"] for speaker, row in metrics["per_speaker"].items()} == {s: 70 for s in ("f1", "f2", "f3", "m1", "m2", "m3")}
    assert [row["support"] for row in metrics["per_class"].values()] == [84, 84, 84, 84, 0, 84]
