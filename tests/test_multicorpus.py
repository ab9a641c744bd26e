"""Several corpora in one run: EMO-DB and nEMO names, corpus-class weights, masking of the classes a
corpus lacks, corpus-wise standardisation, the L-BFGS linear head, leave-one-corpus-out folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synth_clip, write_clip

EMODB_LETTERS = {"angry": "W", "disgusted": "E", "fearful": "A", "happy": "F", "neutral": "N", "sad": "T"}
NEMO_WORDS = {"angry": "anger", "fearful": "fear", "happy": "happiness", "neutral": "neutral", "sad": "sadness"}
CLASS_INDEX = {"angry": 0, "disgusted": 1, "fearful": 2, "happy": 3, "neutral": 4, "sad": 5}


@pytest.fixture(scope="module")
def emodb_dir(tmp_path_factory) -> Path:
    """EMO-DB layout: ``angry/03a01Wa.wav``, speakers 03, 08, 09, every class."""
    root = tmp_path_factory.mktemp("emodb")
    seed = 5000
    for label, letter in EMODB_LETTERS.items():
        for speaker in ("03", "08", "09"):
            for text in ("a01", "b02"):
                seed += 1
                write_clip(root / label / f"{speaker}{text}{letter}a.wav", synth_clip(CLASS_INDEX[label], seed, duration_s=0.5))
    return root


@pytest.fixture(scope="module")
def nemo_dir(tmp_path_factory) -> Path:
    """nEMO layout: ``angry/EB0_anger_1.wav``, speakers EB0, IC0, KD0, no disgust."""
    root = tmp_path_factory.mktemp("nemo")
    seed = 6000
    for label, word in NEMO_WORDS.items():
        for speaker in ("EB0", "IC0", "KD0"):
            for number in (1, 2, 3):
                seed += 1
                write_clip(root / label / f"{speaker}_{word}_{number}.wav", synth_clip(CLASS_INDEX[label], seed, duration_s=0.5))
    return root


def test_emodb_and_nemo_names_give_corpus_and_speaker():
    from ser.data.corpus import Speaker, parse_speaker

    assert parse_speaker("03a01Wa.flac") == Speaker("emodb", "3")
    assert parse_speaker("16b10Td.wav") == Speaker("emodb", "16")
    assert parse_speaker("EB0_anger_1.ogg") == Speaker("nemo", "eb0")
    assert parse_speaker("MP0_happiness_12.ogg") == Speaker("nemo", "mp0")
    # Other corpora's names are not mistaken for these.
    assert parse_speaker("03-01-05-01-02-01-12.wav").corpus == "ravdess"
    assert parse_speaker("rab-f1-b1.wav").corpus == "emovo"
    assert parse_speaker("random_name.wav") is None


def test_speaker_from_parent_folder(tmp_path):
    from ser.data.corpus import scan_corpus

    for speaker in ("anna", "ben"):
        for label in ("angry", "sad"):
            write_clip(tmp_path / "mycorpus" / label / speaker / "take1.wav", synth_clip(0, 1, duration_s=0.2))
    corpus = scan_corpus(tmp_path / "mycorpus", speaker_from="parent")
    assert {(clip.corpus, clip.speaker) for clip in corpus.clips} == {("mycorpus", "anna"), ("mycorpus", "ben")}
    assert all(clip.speaker is None for clip in scan_corpus(tmp_path / "mycorpus").clips)


def test_corpus_class_weights_exact():
    from ser.training.trainer import corpus_class_weights

    # Corpus a: class 0 x2, class 1 x1; corpus b: class 0 x1 (5 clips... plus one more b/0).
    labels = [0, 0, 1, 0, 0]
    corpora = ["a", "a", "a", "b", "b"]
    weights = corpus_class_weights(labels, corpora)
    # n / (corpora * classes in corpus * cell): a/0: 5/(2*2*2), a/1: 5/(2*2*1), b/0: 5/(2*1*2).
    assert weights == pytest.approx([5 / 8, 5 / 8, 5 / 4, 5 / 4, 5 / 4])
    assert sum(weights) == pytest.approx(len(labels))
    # Each corpus carries half the weight, each of a's classes a quarter.
    assert sum(weights[:3]) == pytest.approx(sum(weights[3:]))
    assert weights[0] + weights[1] == pytest.approx(weights[2])


def test_absent_class_gets_no_gradient():
    from transformers import TrainingArguments

    from ser.training.trainer import SerTrainer, allowed_classes

    labels = torch.tensor([0, 1, 2, 0])
    corpora = ["full", "full", "full", "partial"]
    # "full" has classes 0, 1, 2; "partial" only class 0 (among these clips): 1 and 2 are masked for it.
    allowed = torch.from_numpy(allowed_classes(labels.tolist(), corpora, 3))
    assert allowed.tolist() == [[True, True, True]] * 3 + [[True, False, False]]
    logits = torch.randn(4, 3, requires_grad=True)
    trainer = SerTrainer.__new__(SerTrainer)
    trainer.class_weights = None
    trainer.args = TrainingArguments(output_dir="unused", report_to="none")
    loss = trainer._classification_loss({"logits": logits, "member_logits": logits.unsqueeze(1)}, labels, torch.ones(4), allowed)
    loss.backward()
    assert torch.equal(logits.grad[3, 1:], torch.zeros(2))  # exactly zero, not small
    assert (logits.grad[:3] != 0).all()
    # The masked clip's loss is the cross-entropy over its corpus's one class: zero.
    only_partial = trainer._classification_loss({"logits": logits[3:], "member_logits": logits[3:].unsqueeze(1)}, labels[3:], None, allowed[3:])
    assert float(only_partial.detach()) == pytest.approx(0.0, abs=1e-6)


def test_corpus_statistics_standardise_each_corpus_with_its_own():
    from ser.data.corpus import Clip
    from ser.training.frozen_encoder import corpus_statistics

    clips = [Clip(f"{corpus}{index}.wav", "angry", str(index), corpus) for corpus in ("a", "b") for index in range(3)]
    embeddings = np.concatenate([np.random.default_rng(0).normal(0, 1, (3, 2, 4)), np.random.default_rng(1).normal(10, 3, (3, 2, 4))])
    statistics = corpus_statistics(clips, embeddings)
    assert np.allclose(statistics[0].mean, embeddings[:3].mean(0)) and np.allclose(statistics[5].mean, embeddings[3:].mean(0))
    assert np.allclose(statistics[4].variance, embeddings[3:].var(0))


def test_lbfgs_logistic_regression_matches_the_optimum():
    from ser.training.linear_head import fit_logistic_regression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 5)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(int) + (features[:, 1] > 1).astype(int)
    weight, bias = fit_logistic_regression(features, labels, 3, C=0.5)
    # At the optimum the gradient of C * sum CE + |W|^2 / 2 vanishes: C * X^T (P - Y) + W = 0.
    logits = features @ weight.T + bias
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    residual = probabilities - np.eye(3)[labels]
    assert np.abs(0.5 * features.T @ residual + weight.T).max() < 1e-3
    assert np.abs(residual.sum(0)).max() < 1e-3  # the unpenalised bias


def _train(*arguments: str) -> int:
    import train

    return train.main([*arguments, "--report_to", "none", "--save_strategy", "no"])


def test_two_corpora_in_one_run_with_lbfgs_linear_head(emodb_dir, nemo_dir, tiny_whisper_checkpoint_dir, tmp_path):
    from transformers import AutoModelForAudioClassification

    output = tmp_path / "run"
    code = _train(
        "--data_dir", str(emodb_dir), str(nemo_dir), "--model_name_or_path", str(tiny_whisper_checkpoint_dir),
        "--config_overrides", "layers=[1,2],head_hidden_size=0,ensemble_size=1,layer_pooling=concat,adapted_head=true",
        "--head_solver", "lbfgs", "--l2_C", "0.01", "--class_balance", "corpus_class", "--mask_absent_classes", "true",
        "--test_speakers", "emodb:9,nemo:kd0", "--eval_fraction", "0", "--embedding_copies", "", "--corpus_mixup_copies", "1",
        "--embedding_cache_dir", str(tmp_path / "cache"), "--output_dir", str(output),
    )  # fmt: skip
    assert code == 0
    split = json.loads((output / "split.json").read_text())
    assert {speaker.split(":")[0] for speaker in split["train"]["speakers"]} == {"emodb", "nemo"}
    assert sorted(split["test"]["speakers"]) == ["emodb:9", "nemo:kd0"]
    config = json.loads((output / "train_config.json").read_text())
    assert config["data"]["data_dir"] == [str(emodb_dir), str(nemo_dir)]
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics["per_corpus"]) == {"emodb", "nemo"}
    assert sum(part["n"] for part in metrics["per_corpus"].values()) == metrics["n"]
    for name in ("metrics_speaker_adapted.json", "metrics_corpus_adapted.json"):
        assert json.loads((output / name).read_text())["n"] == metrics["n"]
    model = AutoModelForAudioClassification.from_pretrained(output)
    assert model.config.layer_pooling == "concat" and model.heads[0].classifier.in_features == 2 * 2 * model.config.encoder_config["d_model"]
    assert float(model.heads[0].classifier.weight.abs().sum()) > 0
    # The adapted head was fitted too (on the clips standardised with their own speakers' statistics),
    # and it is another head than the single-clip one.
    adapted = model.adapted_heads[0].classifier
    assert model.config.adapted_head and float(adapted.weight.abs().sum()) > 0
    assert not torch.allclose(adapted.weight, model.heads[0].classifier.weight, atol=1e-4)
    # It serves like any model: single clips with the pooled statistics, adapted with others'.
    from ser.inference.predictor import EmotionClassifier

    classifier = EmotionClassifier.from_pretrained(str(output), backend="torch")
    probabilities = classifier.predict_proba([synth_clip(0, 1, duration_s=1.0)])
    assert probabilities.shape == (1, 6) and np.isclose(probabilities.sum(), 1.0, atol=1e-5)


def test_adapted_head_needs_the_lbfgs_solver(emodb_dir, tiny_whisper_checkpoint_dir, tmp_path, caplog):
    code = _train(
        "--data_dir", str(emodb_dir), "--model_name_or_path", str(tiny_whisper_checkpoint_dir),
        "--config_overrides", "layers=[1,2],head_hidden_size=0,ensemble_size=1,layer_pooling=concat,adapted_head=true",
        "--head_solver", "trainer", "--test_speakers", "emodb:9", "--eval_fraction", "0",
        "--embedding_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert code != 0 and "adapted_head=true is fitted by --head_solver lbfgs" in caplog.text


def test_held_out_corpus_with_trainer_and_corpus_standardisation(emodb_dir, nemo_dir, tiny_whisper_checkpoint_dir, tmp_path):
    output = tmp_path / "run"
    code = _train(
        "--data_dir", str(emodb_dir), str(nemo_dir), "--model_name_or_path", str(tiny_whisper_checkpoint_dir),
        "--config_overrides", "layers=[1,2],head_hidden_size=8,ensemble_size=2", "--class_balance", "corpus_class",
        "--mask_absent_classes", "true", "--standardize_per_corpus", "true", "--test_corpora", "emodb", "--eval_fraction", "0",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--embedding_copies", "",
        "--embedding_cache_dir", str(tmp_path / "cache"), "--output_dir", str(output),
    )  # fmt: skip
    assert code == 0
    split = json.loads((output / "split.json").read_text())
    assert {speaker.split(":")[0] for speaker in split["test"]["speakers"]} == {"emodb"}
    assert {speaker.split(":")[0] for speaker in split["train"]["speakers"]} == {"nemo"}
    assert split["test"]["num_clips"] == 36 and "disgusted" not in split["train"]["label_counts"]


def test_unknown_test_corpus_is_refused(emodb_dir, tiny_whisper_checkpoint_dir, tmp_path):
    code = _train(
        "--data_dir", str(emodb_dir), "--model_name_or_path", str(tiny_whisper_checkpoint_dir), "--test_corpora", "nemo",
        "--eval_fraction", "0", "--embedding_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 1


def test_leave_one_corpus_out_folds(tmp_path):
    from scripts.cross_validate import fold_command, parse_corpus_folds, pool_folds, recipe_arguments

    assert parse_corpus_folds("loco:ravdess,EMODB,nemo") == ["ravdess", "emodb", "nemo"]
    assert parse_corpus_folds("1-4;5-8") is None
    from scripts.cross_validate import parse_folds

    # Speaker folds beside them, with the corpus kept on a range (EMO-DB also has a speaker 3).
    assert parse_folds("ravdess:1-2;ravdess:3,emodb:3") == [["ravdess:1", "ravdess:2"], ["ravdess:3", "emodb:3"]]
    assert parse_folds("1-2;5") == [["1", "2"], ["5"]]
    with pytest.raises(ValueError):
        parse_corpus_folds("loco:a,a")
    command = fold_command("config.json", [], "ravdess:21", tmp_path / "fold_0", ["--l2_C", "0.01"], corpus="emodb")
    at = command.index("--test_corpora")
    # The whole corpus is the test split; a test speaker list from the config is cleared.
    assert command[at + 1] == "emodb" and command[command.index("--test_speakers") + 1] == ""
    assert command[-2:] == ["--l2_C", "0.01"] and "ravdess:21" in command
    speaker_command = fold_command("config.json", ["1", "2"], "", tmp_path / "fold_0", [])
    assert "--test_corpora" not in speaker_command and speaker_command[speaker_command.index("--test_speakers") + 1] == "1,2"
    # The held-out corpus is no part of the recipe (folds must agree on it), the head's solver is.
    recipe = recipe_arguments({"data": {"test_corpora": "emodb", "class_balance": "corpus_class"}, "model": {"head_solver": "lbfgs", "l2_C": 0.002}, "training": {}})
    assert recipe == {"class_balance": "corpus_class", "head_solver": "lbfgs", "l2_C": 0.002}
    folds = [
        {"speakers": [], "accuracy": 0.5, "macro_f1": 0.4, "n": 10, "confusion_matrix": [[5, 5], [0, 0]], "held_out_corpus": "emodb"},
        {"speakers": [], "accuracy": 0.7, "macro_f1": 0.6, "n": 30, "confusion_matrix": [[21, 9], [0, 0]], "held_out_corpus": "nemo"},
    ]
    pooled = pool_folds(folds)
    assert pooled["mean_accuracy"] == 0.6 and pooled["pooled_accuracy"] == 0.65
    assert [fold["held_out_corpus"] for fold in pooled["folds"]] == ["emodb", "nemo"]


def test_cross_corpus_mixup_mixes_within_a_class_across_corpora_exact():
    from ser.training.frozen_encoder import cross_corpus_mixup

    embeddings = np.array([[0.0], [10.0], [100.0], [1000.0]])
    labels, corpora = [0, 0, 1, 1], ["a", "b", "a", "a"]  # class 1 has no partner in another corpus
    sources, mixed = cross_corpus_mixup(embeddings, labels, corpora, 3, 0.5, np.random.default_rng(0))
    assert sources == [0, 0, 0, 1, 1, 1] and mixed.shape == (6, 1)
    # Clip 0 mixes with clip 1 (and back), with its own side weighing 0.5-1.
    assert np.all((mixed[:3, 0] >= 0.0) & (mixed[:3, 0] <= 5.0)) and np.all((mixed[3:, 0] >= 5.0) & (mixed[3:, 0] <= 10.0))
    again = cross_corpus_mixup(embeddings, labels, corpora, 3, 0.5, np.random.default_rng(0))[1]
    np.testing.assert_array_equal(mixed, again)
    assert cross_corpus_mixup(embeddings, labels, corpora, 2, 1.0, np.random.default_rng(1))[1][:, 0].tolist() == [0.0, 0.0, 10.0, 10.0]
