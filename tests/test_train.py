"""train.py end to end on generated audio and tiny random models, plus its argument handling,
the training helpers (ser/training/trainer.py) and augmentation (ser/audio/augment.py). Offline and small."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ser.audio.augment import (
    AugmentConfig,
    add_color_noise,
    add_noise,
    apply_gain,
    augment_waveform,
    fixed_copy,
    parse_fixed_copies,
    speed_perturb,
)
from ser.inference.predictor import EmotionClassifier
from ser.training.arguments import FROM_SCRATCH_LEARNING_RATE, DataArguments, ModelArguments, TrainSetupError
from ser.training.datasets import ClipDataset, center_crop
from ser.training.setup import build_model, load_corpus_split
from ser.training.trainer import SerTrainer, class_weights, mix_batch, sample_weights
from tests.conftest import REPO_ROOT, SHARED_DATA, synth_clip, write_clip

SIX = ["angry", "disgusted", "fearful", "happy", "neutral", "sad"]

_spec = importlib.util.spec_from_file_location("train_script", REPO_ROOT / "train.py")
train = importlib.util.module_from_spec(_spec)
sys.modules["train_script"] = train  # dataclasses look their module up while the class is built
_spec.loader.exec_module(train)

# Small and quick: one short epoch, no checkpoints kept beyond what the test needs.
FAST = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--disable_tqdm", "true", "--seed", "0"]


def _run(data_dir: Path, output_dir: Path, *extra: str) -> int:
    return train.main(["--data_dir", str(data_dir), "--output_dir", str(output_dir), *FAST, *extra])


def _read(path: Path):
    return json.loads(path.read_text())


def test_end_to_end_wav2vec2_writes_all_outputs(tmp_path, audio_emotions_dir, tiny_wav2vec2_dir):
    output_dir = tmp_path / "run"
    assert _run(audio_emotions_dir, output_dir, "--model_name_or_path", str(tiny_wav2vec2_dir), "--num_train_epochs", "1") == 0

    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "metrics.json", "split.json", "train_config.json", "README.md"):
        assert (output_dir / name).is_file(), name
    split, metrics, config = _read(output_dir / "split.json"), _read(output_dir / "metrics.json"), _read(output_dir / "config.json")

    # Surprised is excluded everywhere; the six labels in canonical order.
    assert config["id2label"] == {str(index): label for index, label in enumerate(SIX)}
    assert metrics["labels"] == SIX
    for name in ("train", "eval", "test"):
        assert "surprised" not in split[name]["label_counts"]
    # 17 clips per class in the fixture (12 RAVDESS, 2 CREMA-D, 2 TESS, 1 SAVEE), 6 classes.
    assert sum(split[name]["num_clips"] for name in ("train", "eval", "test")) == 6 * 17
    # No speaker in two splits, and the test metrics cover exactly the test split.
    speakers = [set(split[name]["speakers"]) for name in ("train", "eval", "test")]
    assert not (speakers[0] & speakers[1]) and not (speakers[0] & speakers[2]) and not (speakers[1] & speakers[2])
    assert len(set().union(*speakers)) == 11
    assert metrics["n"] == split["test"]["num_clips"]
    assert sum(metrics["per_class"][label]["support"] for label in SIX) == metrics["n"]
    assert metrics["speakers"] == split["test"]["speakers"]
    assert set(metrics) >= {"accuracy", "macro_f1", "uar", "confusion_matrix", "per_class"}

    # Label maps round-trip: what the predictor reads is what training set.
    classifier = EmotionClassifier.from_pretrained(output_dir)
    assert classifier.labels == SIX
    resolved = _read(output_dir / "train_config.json")
    assert resolved["data"]["data_dir"] == str(audio_emotions_dir)
    assert resolved["training"]["eval_strategy"] == "epoch" and resolved["training"]["learning_rate"] == 3e-5
    card = (output_dir / "README.md").read_text()
    assert f"| macro-F1 | {metrics['macro_f1']:.3f} |" in card and f"({metrics['n']} clips)" in card


def test_use_weighted_layer_sum_is_set_or_refused_clearly(tiny_wav2vec2_dir):
    import torch

    try:
        model, _ = build_model(ModelArguments(model_name_or_path=str(tiny_wav2vec2_dir), use_weighted_layer_sum=True), SIX)
    except TrainSetupError as error:
        # transformers 5.23 returns one hidden state fewer than group-norm wav2vec2 has layer weights: refused up front.
        assert "--use_weighted_layer_sum does not work for Wav2Vec2ForSequenceClassification" in str(error)
        return
    assert model.config.use_weighted_layer_sum is True
    assert model(input_values=torch.zeros(2, 16_000)).logits.shape == (2, 6)


def test_from_scratch_emotion_cnn_with_sampler_and_augmentation(tmp_path, audio_emotions_dir, caplog):
    output_dir = tmp_path / "cnn"
    caplog.set_level(logging.INFO)
    code = _run(
        audio_emotions_dir, output_dir,
        "--from_scratch", "emotion-cnn-small", "--max_steps", "2", "--class_balance", "sampler", "--speed_prob", "1.0",
        "--mixup_alpha", "0.4", "--eval_strategy", "no", "--save_strategy", "no",
    )  # fmt: skip
    assert code == 0
    assert _read(output_dir / "config.json")["model_type"] == "emotion_cnn"
    assert _read(output_dir / "train_config.json")["training"]["learning_rate"] == FROM_SCRATCH_LEARNING_RATE
    assert "has no CNN feature encoder" in caplog.text
    classifier = EmotionClassifier.from_pretrained(output_dir)
    prediction = classifier.classify_waveform(synth_clip(0, seed=5))
    assert classifier.labels == SIX and prediction.label in SIX


def test_corrupt_clip_is_skipped_and_counted_and_resume(tmp_path, audio_emotions_dir, tiny_cnn_dir, caplog):
    data_dir = tmp_path / "data"
    shutil.copytree(audio_emotions_dir, data_dir)
    corrupt = data_dir / "Emotions" / "Angry" / "03-01-05-01-02-02-01.wav"
    corrupt.write_bytes(b"RIFF not really a wave file")
    output_dir = tmp_path / "run"
    caplog.set_level(logging.INFO)
    args = ["--model_name_or_path", str(tiny_cnn_dir), "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "1"]
    assert _run(data_dir, output_dir, *args, "--max_steps", "1") == 0
    split = _read(output_dir / "split.json")
    assert [item["path"] for item in split["skipped_clips"]] == [str(corrupt)]
    assert "Skipped 1 of 103 clips" in caplog.text
    assert sum(split[name]["num_clips"] for name in ("train", "eval", "test")) == 102

    # --resume_from_checkpoint true continues from checkpoint-1 up to the new max_steps.
    caplog.clear()
    assert _run(data_dir, output_dir, *args, "--max_steps", "2", "--resume_from_checkpoint", "true") == 0
    assert "Resuming from" in caplog.text and "checkpoint-1" in caplog.text
    assert _read(output_dir / "trainer_state.json")["global_step"] == 2


def _make_corpus(root: Path, folders: dict[str, int]) -> Path:
    for index, (folder, count) in enumerate(folders.items()):
        (root / "Emotions" / folder).mkdir(parents=True, exist_ok=True)
        for clip in range(count):
            write_clip(root / "Emotions" / folder / f"03-01-0{index + 1}-01-01-01-{clip + 1:02d}.wav", synth_clip(index, clip, 0.3))
    return root


@pytest.mark.parametrize(
    ("folders", "extra", "message"),
    [
        ({"Angry": 3, "Calm": 3, "Sad": 3}, [], r"Unknown class folder\(s\).*\['Calm'\].*--label_map"),
        ({"Angry": 3, "Sad": 0}, [], r"without audio clips.*\['Sad'\].*--exclude_labels"),
        ({"Angry": 3, "Surprised": 3}, [], r"Only \['angry'\] left"),
        ({"Angry": 3, "Sad": 3}, ["--test_speakers", "42"], r"'42' is not in the corpus"),
        ({"Angry": 3, "Sad": 3}, ["--from_scratch", "no-such-preset"], r"--from_scratch: Unknown config 'no-such-preset'"),
        ({"Angry": 3, "Sad": 3}, ["--exclude_speakers", "42"], r"--exclude_speakers: speaker '42' is not in the corpus"),
        ({"Angry": 3, "Sad": 3}, ["--from_scratch", "emotion-cnn-small", "--config_overrides", "chanels=[8]"], r"--config_overrides: EmotionCnnConfig has no attribute 'chanels'"),
        ({"Angry": 3, "Sad": 3}, ["--from_scratch", "emotion-cnn-small", "--config_overrides", "ensemble_size=0"], r"--config_overrides: ensemble_size must be >= 1"),
        ({"Angry": 3, "Sad": 3}, ["--config_overrides", "dropout=0.1"], r"--config_overrides only applies with --from_scratch"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, caplog, folders, extra, message):
    data_dir = _make_corpus(tmp_path / "data", folders)
    assert _run(data_dir, tmp_path / "out", *extra) == 1
    errors = "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)
    assert re.search(message, errors, re.DOTALL), errors


def test_missing_folder_and_unparsed_names(tmp_path, caplog):
    assert _run(tmp_path / "nowhere", tmp_path / "out") == 1
    assert "does not exist" in caplog.text
    caplog.clear()
    for index in range(3):
        write_clip(tmp_path / "odd" / "angry" / f"take{index}.wav", synth_clip(0, index, 0.3))
        write_clip(tmp_path / "odd" / "sad" / f"take{index}.wav", synth_clip(5, index, 0.3))
    assert _run(tmp_path / "odd", tmp_path / "out") == 1
    assert "no speaker can be parsed" in caplog.text and "take0.wav" in caplog.text and "--allow_random_fallback" in caplog.text


def test_label_map_renames_folders(tmp_path):
    data_dir = _make_corpus(tmp_path / "data", {"Angry": 2, "Calm": 2})
    labels, split = load_corpus_split(DataArguments(data_dir=str(data_dir), label_map="calm=neutral", split="random", eval_fraction=0.0, test_fraction=0.25), seed=0)
    assert labels == ["angry", "neutral"]
    assert len(split.train) == 3 and len(split.test) == 1


def test_arguments_precedence_cli_over_json_over_defaults(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data_dir": "d", "output_dir": "o", "num_train_epochs": 3, "learning_rate": 0.01, "from_scratch": "emotion-cnn-small", "test_speakers": "21,22"}))
    data_args, model_args, training_args = train.parse_arguments([str(config), "--learning_rate", "0.002"])
    assert (training_args.num_train_epochs, training_args.learning_rate) == (3, 0.002)
    assert (model_args.from_scratch, data_args.test_speakers) == ("emotion-cnn-small", "21,22")
    assert training_args.load_best_model_at_end and training_args.metric_for_best_model == "macro_f1"
    # A user strategy that contradicts our load_best default drops the default rather than failing.
    _, _, training_args = train.parse_arguments(["--data_dir", "d", "--output_dir", "o", "--save_strategy", "steps"])
    assert training_args.load_best_model_at_end is False
    # No eval split -> no evaluation; asking for it anyway is a parser error.
    _, _, training_args = train.parse_arguments(["--data_dir", "d", "--output_dir", "o", "--eval_fraction", "0"])
    assert training_args.eval_strategy == "no"
    for argv in (
        ["--data_dir", "d", "--output_dir", "o", "--eval_fraction", "0", "--eval_strategy", "steps"],
        ["--output_dir", "o"],
    ):
        with pytest.raises(SystemExit):
            train.parse_arguments(argv)
    config.write_text(json.dumps({"data_dir": "d", "output_dir": "o", "num_epochs": 3}))
    with pytest.raises(SystemExit):
        train.parse_arguments([str(config)])


def test_exclude_speakers_and_config_overrides(tmp_path, audio_emotions_dir):
    output_dir = tmp_path / "run"
    code = _run(
        audio_emotions_dir, output_dir, "--from_scratch", "emotion-tdnn-ensemble",
        "--config_overrides", "ensemble_size=1,channels=[8,8],silence_threshold_db=30.5",
        "--exclude_speakers", "5,6", "--test_speakers", "1,2", "--eval_fraction", "0", "--max_steps", "1", "--save_strategy", "no",
    )  # fmt: skip
    assert code == 0
    split, config = _read(output_dir / "split.json"), _read(output_dir / "config.json")
    everywhere = {speaker for name in ("train", "eval", "test") for speaker in split[name]["speakers"]}
    assert everywhere.isdisjoint({"ravdess:5", "ravdess:6"}) and {"ravdess:3", "ravdess:4"} <= everywhere
    # 102 clips without Surprised; each RAVDESS actor has 12 of them (6 classes x 2 statements).
    assert sum(split[name]["num_clips"] for name in ("train", "eval", "test")) == 6 * 17 - 2 * 12
    assert (config["ensemble_size"], config["channels"], config["silence_threshold_db"]) == (1, [8, 8], 30.5)


def test_cross_validation_trains_every_fold_and_pools(tmp_path, audio_emotions_dir):
    from scripts import cross_validate

    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"data_dir": str(audio_emotions_dir), "output_dir": "unused", "from_scratch": "emotion-tdnn-small", "eval_fraction": 0}))
    output_dir = tmp_path / "cv"
    extra = ["--max_steps", "1", "--config_overrides", "channels=[8]", *FAST]
    assert cross_validate.main([str(config), "--output_dir", str(output_dir), "--folds", "1-2;3,4", "--exclude_speakers", "6", "--jobs", "2", "--", *extra]) == 0
    summary = _read(output_dir / "cv.json")
    assert [fold["speakers"] for fold in summary["folds"]] == [["ravdess:1", "ravdess:2"], ["ravdess:3", "ravdess:4"]]
    for index in (0, 1):
        split = _read(output_dir / f"fold_{index}" / "split.json")
        assert "ravdess:6" not in split["train"]["speakers"] and not list(output_dir.glob(f"fold_{index}/checkpoint-*"))
    folds = [_read(output_dir / f"fold_{index}" / "metrics.json") for index in (0, 1)]
    assert summary["n"] == folds[0]["n"] + folds[1]["n"] == 2 * 2 * 12
    assert summary["mean_accuracy"] == pytest.approx((folds[0]["accuracy"] + folds[1]["accuracy"]) / 2, abs=1e-4)
    assert summary["model_config"]["channels"] == [8] and "id2label" not in summary["model_config"]
    assert summary["recipe"]["max_steps"] == 1 and "test_speakers" not in summary["recipe"] and "data_dir" not in summary["recipe"]
    # Pooling again without training gives the same file, command included.
    before = (output_dir / "cv.json").read_text()
    assert cross_validate.main([str(config), "--output_dir", str(output_dir), "--folds", "1-2;3,4", "--exclude_speakers", "6", "--jobs", "2", "--pool_only", "--", *extra]) == 0
    assert (output_dir / "cv.json").read_text() == before


def test_cross_validation_helpers_exact():
    from scripts.cross_validate import parse_folds, pool_folds

    assert parse_folds("1-3; 5,7 ;x") == [["1", "2", "3"], ["5", "7"], ["x"]]
    with pytest.raises(ValueError, match="at least two folds"):
        parse_folds("1-4")
    fold = lambda correct, wrong, f1: {"speakers": [], "accuracy": correct / (correct + wrong), "macro_f1": f1, "n": correct + wrong, "confusion_matrix": [[correct, wrong], [0, 0]]}  # noqa: E731
    summary = pool_folds([fold(3, 1, 0.5), fold(1, 3, 0.3)])
    assert (summary["mean_accuracy"], summary["std_accuracy"], summary["pooled_accuracy"], summary["mean_macro_f1"]) == (0.5, 0.3536, 0.5, 0.4)
    summary = pool_folds([fold(9, 1, 0.5), fold(1, 1, 0.3)])
    assert (summary["mean_accuracy"], summary["pooled_accuracy"], summary["n"]) == (0.7, round(10 / 12, 4), 12)


def test_help_explains_flags():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for phrase in ("--test_speakers", "--from_scratch", "--class_balance", "--max_duration_s", "--num_train_epochs", "speaker-independent"):
        assert phrase in text


def test_ddp_two_cpu_processes(tmp_path, audio_emotions_dir, tiny_cnn_dir):
    output_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        str(REPO_ROOT / "train.py"), "--data_dir", str(audio_emotions_dir), "--output_dir", str(output_dir),
        "--model_name_or_path", str(tiny_cnn_dir), "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2",
        "--save_strategy", "steps", "--save_steps", "2", "--use_cpu", "true", *FAST,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    split, metrics = _read(output_dir / "split.json"), _read(output_dir / "metrics.json")
    # Predictions gathered from both ranks, without the padding duplicates of a distributed sampler.
    assert metrics["n"] == split["test"]["num_clips"]
    assert _read(output_dir / "trainer_state.json")["global_step"] == 2
    assert _read(output_dir / "train_config.json")["world_size"] == 2


@pytest.mark.skipif(not (SHARED_DATA / "ravdess").is_dir(), reason="shared RAVDESS copy not present")
def test_shared_ravdess_two_steps(tmp_path, tiny_cnn_dir):
    output_dir = tmp_path / "ravdess"
    code = _run(
        SHARED_DATA / "ravdess", output_dir, "--model_name_or_path", str(tiny_cnn_dir),
        "--test_speakers", "21,22,23,24", "--eval_speakers", "17,18,19,20",
        "--max_steps", "2", "--max_train_samples", "16", "--max_eval_samples", "12", "--eval_strategy", "no", "--save_strategy", "no",
    )  # fmt: skip
    assert code == 0
    split = _read(output_dir / "split.json")
    assert split["test"]["speakers"] == [f"ravdess:{actor}" for actor in (21, 22, 23, 24)]
    assert split["train"]["speakers"] == sorted(f"ravdess:{actor}" for actor in range(1, 17))
    assert (split["train"]["num_clips"], split["test"]["num_clips"]) == (16, 12)


# -- helpers ----------------------------------------------------------------------------------------
def test_class_and_sample_weights_exact():
    assert class_weights([0, 0, 0, 1], 3).tolist() == pytest.approx([4 / 6, 2.0, 0.0])
    assert sample_weights([0, 0, 1]) == [0.5, 0.5, 1.0]


def test_mix_batch_exact():
    import torch

    waveforms = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    torch.manual_seed(0)
    mixed, partner, weight = mix_batch({"input_values": waveforms, "attention_mask": attention_mask}, alpha=0.4)
    assert sorted(partner.tolist()) == [0, 1, 2] and 0.5 <= weight <= 1.0
    assert torch.allclose(mixed["input_values"], weight * waveforms + (1 - weight) * waveforms[partner])
    for row, other in enumerate(partner.tolist()):  # a mixture lasts as long as its longer clip
        assert mixed["attention_mask"][row].sum() == max(attention_mask[row].sum(), attention_mask[other].sum())
    assert torch.equal(waveforms, torch.arange(12, dtype=torch.float32).reshape(3, 4))  # inputs untouched


def _tiny_trainer(tmp_path: Path, model_dir: Path, label_smoothing_factor: float = 0.0, **trainer_kwargs) -> SerTrainer:
    from transformers import AutoModelForAudioClassification, TrainingArguments

    model = AutoModelForAudioClassification.from_pretrained(model_dir)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, label_smoothing_factor=label_smoothing_factor)
    return SerTrainer(model=model, args=args, **trainer_kwargs)


def test_mixup_only_while_training_and_alpha_checked(tmp_path, tiny_cnn_dir):
    import torch

    trainer = _tiny_trainer(tmp_path, tiny_cnn_dir, mixup_alpha=0.4)
    model = trainer.model
    torch.manual_seed(0)
    inputs = {"input_values": torch.randn(4, 8_000), "labels": torch.tensor([0, 1, 2, 3])}
    model.eval()
    plain = torch.nn.functional.cross_entropy(model(input_values=inputs["input_values"]).logits, inputs["labels"])
    assert trainer.compute_loss(model, inputs).item() == pytest.approx(plain.item(), rel=1e-5)
    model.train()  # dropout and SpecAugment draw from the same seeded generator in both computations
    with torch.no_grad():
        torch.manual_seed(1)
        mixed, partner, weight = mix_batch(inputs, 0.4)
        logits = model(input_values=mixed["input_values"]).logits
        cross_entropy = torch.nn.functional.cross_entropy
        expected = weight * cross_entropy(logits, inputs["labels"]) + (1 - weight) * cross_entropy(logits, inputs["labels"][partner])
        torch.manual_seed(1)
        assert trainer.compute_loss(model, inputs).item() == pytest.approx(expected.item(), rel=1e-5)
        assert weight < 1.0 and abs(expected.item() - cross_entropy(logits, inputs["labels"]).item()) > 1e-4
    with pytest.raises(ValueError, match="mixup_alpha must be >= 0"):
        SerTrainer(model=model, args=trainer.args, mixup_alpha=-1.0)


@pytest.mark.parametrize("weighted", [False, True])
def test_label_smoothing_is_honoured_with_and_without_class_weights(tmp_path, tiny_cnn_dir, weighted):
    import torch

    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.0, 3.0]) if weighted else None
    trainer = _tiny_trainer(tmp_path, tiny_cnn_dir, label_smoothing_factor=0.1, class_weights=weights)
    model = trainer.model.eval()
    torch.manual_seed(0)
    inputs = {"input_values": torch.randn(4, 8_000), "labels": torch.tensor([0, 1, 2, 5])}
    with torch.no_grad():
        logits = model(input_values=inputs["input_values"]).logits
        smoothed = torch.nn.functional.cross_entropy(logits, inputs["labels"], weight=weights, label_smoothing=0.1)
        plain = torch.nn.functional.cross_entropy(logits, inputs["labels"], weight=weights)
        loss = trainer.compute_loss(model, inputs).item()
    assert loss == pytest.approx(smoothed.item(), rel=1e-5) and abs(loss - plain.item()) > 1e-3


def test_dataset_crops_train_randomly_and_eval_centrally():
    waveform = np.arange(32_000, dtype=np.float32)
    eval_item = ClipDataset([waveform], [3], 16_000, max_duration_s=1.0, train=False)[0]
    assert eval_item["labels"] == 3 and np.array_equal(eval_item["input_values"], center_crop(waveform, 16_000))
    assert eval_item["input_values"][0] == 8_000
    train_set = ClipDataset([waveform], [3], 16_000, max_duration_s=1.0, train=True, augment=None)
    starts = {float(train_set[0]["input_values"][0]) for _ in range(8)}
    assert all(len(train_set[0]["input_values"]) == 16_000 for _ in range(3)) and len(starts) > 1
    whole = ClipDataset([waveform], [0], 16_000, max_duration_s=None, train=False)[0]["input_values"]
    assert len(whole) == 32_000


def test_augmentations():
    rng = np.random.default_rng(0)
    clean = (0.1 * np.sin(np.arange(160_000) / 10.0)).astype(np.float32)
    noisy = add_noise(clean, rng, (20.0, 20.0))
    snr_db = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2))
    assert noisy.dtype == np.float32 and snr_db == pytest.approx(20.0, abs=0.2)
    coloured = add_color_noise(clean, rng, (10.0, 10.0), 16_000)
    snr_db = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((coloured - clean).astype(np.float64) ** 2))
    assert snr_db == pytest.approx(10.0, abs=0.3)
    gained = apply_gain(clean, rng, 6.0)
    ratio = float(np.max(np.abs(gained)) / np.max(np.abs(clean)))
    assert 10 ** (-6 / 20) - 1e-6 <= ratio <= 10 ** (6 / 20) + 1e-6
    assert len(speed_perturb(clean, rng, [1.25], 16_000)) == pytest.approx(len(clean) / 1.25, abs=2)
    config = AugmentConfig(noise_prob=1.0, gain_prob=1.0, speed_prob=1.0, speed_factors=(0.9,), pitch_prob=1.0)
    first = augment_waveform(clean, np.random.default_rng(7), config, 16_000)
    second = augment_waveform(clean, np.random.default_rng(7), config, 16_000)
    assert np.array_equal(first, second) and len(first) == pytest.approx(len(clean) / 0.9, abs=2)
    assert not AugmentConfig(noise_prob=0, gain_prob=0, speed_prob=0).enabled


def test_augmentation_leaves_the_global_generators_as_they_were():
    import random

    np.random.seed(3)
    random.seed(3)
    expected = (np.random.random(), random.random())
    np.random.seed(3)
    random.seed(3)
    add_color_noise(np.ones(1600, np.float32), np.random.default_rng(0), (20.0, 20.0), 16_000)
    assert (np.random.random(), random.random()) == expected


def test_fixed_copies_exact_on_tiny_arrays():
    tone = (0.1 * np.sin(2 * np.pi * 200 * np.arange(16_000) / 16_000)).astype(np.float32)
    # Gain is exact, and clipped at full scale.
    np.testing.assert_allclose(fixed_copy(tone, "gain_db=6", 16_000, 0), tone * 10 ** (6 / 20), rtol=1e-6)
    assert float(np.max(fixed_copy(tone * 9, "gain_db=6", 16_000, 0))) == 1.0
    # Tempo changes the length by the rate and keeps the pitch; pitch keeps the length and moves the pitch.
    slower = fixed_copy(tone, "tempo=0.8", 16_000, 0)
    assert len(slower) == pytest.approx(len(tone) / 0.8, rel=0.01)
    higher = fixed_copy(tone, "pitch=12", 16_000, 0)
    assert len(higher) == len(tone)

    def peak_hz(waveform):
        middle = waveform[len(waveform) // 4 : 3 * len(waveform) // 4]
        return np.argmax(np.abs(np.fft.rfft(middle))) * 16_000 / len(middle)

    assert peak_hz(slower) == pytest.approx(200, abs=5) and peak_hz(higher) == pytest.approx(400, abs=10)
    # A copy is the same every time for a seed (what the embedding cache relies on), another seed differs.
    noisy = fixed_copy(tone, "color_noise_snr_db=15", 16_000, 1)
    assert np.array_equal(noisy, fixed_copy(tone, "color_noise_snr_db=15", 16_000, 1))
    assert not np.array_equal(noisy, fixed_copy(tone, "color_noise_snr_db=15", 16_000, 2))
    # The codec round trip keeps length and level, and loses detail.
    coded = fixed_copy(tone, "opus_kbps=16", 16_000, 0)
    assert len(coded) == len(tone) and 0.5 < float(np.std(coded) / np.std(tone)) < 1.5
    assert parse_fixed_copies("pitch=-2, opus_kbps=16,tempo=1.10") == ["pitch=-2", "opus_kbps=16", "tempo=1.1"]
    for bad in ("pitch=30", "reverb=1", "opus_kbps", "tempo=fast"):
        with pytest.raises(ValueError, match="expected one of"):
            parse_fixed_copies(bad)
