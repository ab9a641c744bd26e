"""Adapting to the speaker / corpus: swappable statistics in the predictor, which clips share them,
and evaluate_crosslingual.py --adapt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import synth_clip

from ser.core.statistics import EmbeddingStatistics
from ser.inference.adaptation import (
    MIN_ADAPTATION_CLIPS,
    NO_SPEAKER,
    TOO_FEW_CLIPS,
    TOO_UNIFORM,
    AdaptationUnsupportedError,
    adapted_probabilities,
    dominant_answer,
    plan_adaptation,
    plan_for,
    too_uniform,
)
from ser.inference.predictor import EmotionClassifier


def _clips(count: int = 6, seed: int = 0) -> list[np.ndarray]:
    return [synth_clip(index % 6, seed=seed + index, duration_s=0.6 + 0.25 * (index % 4)) for index in range(count)]


@pytest.fixture(scope="module")
def whisper_classifier(tiny_whisper_ser_dir) -> EmotionClassifier:
    return EmotionClassifier.from_pretrained(tiny_whisper_ser_dir, backend="torch")


@pytest.fixture(scope="module")
def whisper_model(tiny_whisper_ser_dir):
    from transformers import AutoModelForAudioClassification

    return AutoModelForAudioClassification.from_pretrained(tiny_whisper_ser_dir).eval()


def _model_probabilities(model, classifier, clips, statistics=None) -> np.ndarray:
    """The model's own forward (one clip at a time), for reference."""
    rows = []
    for clip in clips:
        inputs = classifier.preprocess([clip])
        extra = {}
        if statistics is not None:
            extra = {"statistics_mean": torch.from_numpy(statistics.mean).float(), "statistics_var": torch.from_numpy(statistics.variance).float()}
        with torch.no_grad():
            rows.append(torch.softmax(model(**inputs, **extra).logits, dim=-1)[0].numpy())
    return np.stack(rows)


def test_single_clip_uses_the_training_statistics_and_statistics_can_be_swapped(whisper_classifier, whisper_model):
    clips = _clips()
    assert whisper_classifier.supports_adaptation
    embeddings = whisper_classifier.embed_batch(clips)
    assert embeddings.shape == (len(clips), *whisper_classifier.embedding_shape) == (len(clips), 2, 32)
    with torch.no_grad():
        expected_embedding = whisper_model.embed(**whisper_classifier.preprocess(clips[:1]))[0].numpy()
    np.testing.assert_allclose(embeddings[0], expected_embedding, atol=1e-5)

    default = whisper_classifier.predict_proba(clips)
    np.testing.assert_allclose(default, _model_probabilities(whisper_model, whisper_classifier, clips), atol=1e-5)

    own = EmbeddingStatistics.of(embeddings)
    adapted = whisper_classifier.predict_proba(clips, own)
    np.testing.assert_allclose(adapted, _model_probabilities(whisper_model, whisper_classifier, clips, own), atol=1e-5)
    assert np.abs(adapted - default).max() > 1e-3  # the statistics matter
    # The two-pass route (embed everything, then classify) gives the same answers.
    predictions = whisper_classifier.classify_embeddings(embeddings, [len(clip) for clip in clips], own)
    np.testing.assert_allclose([[p.probabilities[label] for label in whisper_classifier.labels] for p in predictions], adapted, atol=1e-6)
    assert predictions[0].duration_s == pytest.approx(len(clips[0]) / 16_000)


def test_statistics_of_another_shape_are_refused(whisper_classifier):
    with pytest.raises(ValueError, match="do not fit"):
        whisper_classifier.predict_proba(_clips(1), EmbeddingStatistics.of(np.ones((3, 4, 4))))


def test_onnx_backend_gives_the_same_embeddings_after_releasing_the_torch_weights(tiny_whisper_ser_dir, tmp_path, whisper_classifier):
    import shutil

    model_dir = shutil.copytree(tiny_whisper_ser_dir, tmp_path / "model")
    onnx = EmotionClassifier.from_pretrained(model_dir, backend="onnx")
    assert onnx.model is None  # the encoder's weights are freed; the head copy still classifies
    clips = _clips()
    np.testing.assert_allclose(onnx.embed_batch(clips), whisper_classifier.embed_batch(clips), atol=1e-4)
    own = EmbeddingStatistics.of(whisper_classifier.embed_batch(clips))
    np.testing.assert_allclose(onnx.predict_proba(clips, own), whisper_classifier.predict_proba(clips, own), atol=1e-4)


def test_long_clip_embedding_is_the_length_weighted_mean_of_its_windows(tiny_whisper_ser_dir):
    classifier = EmotionClassifier.from_pretrained(tiny_whisper_ser_dir, backend="torch", window_s=1.0)
    long_clip = synth_clip(2, seed=9, duration_s=2.5)  # windows of 1.0, 1.0 and 0.5 s
    pieces = [long_clip[:16_000], long_clip[16_000:32_000], long_clip[32_000:]]
    expected = sum(len(piece) * classifier.embed_batch([piece])[0].astype(np.float64) for piece in pieces) / len(long_clip)
    np.testing.assert_allclose(classifier.embed_batch([long_clip])[0], expected, atol=1e-5)


def test_models_without_an_embedding_refuse_adaptation_clearly(tiny_tdnn_dir):
    classifier = EmotionClassifier.from_pretrained(tiny_tdnn_dir, backend="torch")
    assert not classifier.supports_adaptation
    with pytest.raises(AdaptationUnsupportedError, match="cannot adapt"):
        classifier.embed_batch(_clips(1))
    with pytest.raises(AdaptationUnsupportedError, match="cannot adapt"):
        classifier.predict_proba(_clips(1), EmbeddingStatistics.of(np.ones((2, 3))))
    assert classifier.predict_proba(_clips(2)).shape == (2, 6)  # single clips are unaffected


# -- the statistics object ---------------------------------------------------------------------------
def test_recent_statistics_keep_at_most_capacity_clips_and_follow_the_latest():
    rng = np.random.default_rng(0)
    statistics = EmbeddingStatistics.empty((3,))
    for _ in range(10):
        statistics = statistics.add_recent(rng.normal(0.0, 1.0, 3), capacity=4)
    assert statistics.count == 4
    for _ in range(30):  # the voice changes: the statistics move to it
        statistics = statistics.add_recent(rng.normal(10.0, 2.0, 3), capacity=4)
    assert statistics.count == 4
    assert np.all(np.abs(statistics.mean - 10.0) < 3.0)
    # Until full it is the plain running statistics.
    stack = rng.normal(size=(3, 3))
    partial = EmbeddingStatistics.empty((3,))
    for row in stack:
        partial = partial.add_recent(row, capacity=4)
    np.testing.assert_allclose(partial.mean, stack.mean(axis=0))
    np.testing.assert_allclose(partial.variance, stack.var(axis=0))
    weighted = partial.weighted_as(2)
    assert weighted.count == 2
    np.testing.assert_allclose(weighted.variance, partial.variance)


def test_statistics_from_a_client_are_validated():
    good = EmbeddingStatistics.of(np.arange(6.0).reshape(3, 2)).to_dict()
    assert EmbeddingStatistics.from_dict(json.loads(json.dumps(good))).count == 3
    for bad in ({**good, "mean": [float("nan"), 0.0]}, {**good, "sum_squares": [-1.0, 0.0]}, {**good, "mean": [0.0]}):
        with pytest.raises(ValueError, match="Malformed"):
            EmbeddingStatistics.from_dict(bad)


# -- which clips share statistics -------------------------------------------------------------------
def test_speaker_plan_falls_back_to_the_corpus_and_counts_why():
    rng = np.random.default_rng(1)
    embeddings = np.concatenate([rng.normal(0, 1, (6, 4)), rng.normal(5, 1, (6, 4)), rng.normal(0, 1, (3, 4))])
    speakers = ["a"] * 6 + ["b"] * 6 + ["c", "c", None]
    plan = plan_adaptation(embeddings, "speaker", speakers, min_clips=5)
    assert plan.speakers == {"a": 6, "b": 6}
    assert plan.fallback == {NO_SPEAKER: 1, TOO_FEW_CLIPS: 2}
    corpus = EmbeddingStatistics.of(embeddings)
    np.testing.assert_allclose(plan.per_clip[0].mean, embeddings[:6].mean(axis=0))
    np.testing.assert_allclose(plan.per_clip[6].mean, embeddings[6:12].mean(axis=0))
    for index in (12, 13, 14):
        np.testing.assert_allclose(plan.per_clip[index].mean, corpus.mean)
    summary = plan.to_dict()
    assert summary["fallback_to_corpus_clips"] == 3 and summary["uses_labels"] is False and summary["sees_test_clips"] is True

    corpus_plan = plan_adaptation(embeddings, "corpus")
    assert all(statistics is corpus_plan.per_clip[0] for statistics in corpus_plan.per_clip)
    too_few = plan_adaptation(embeddings[:3], "corpus", min_clips=5)
    assert too_few.per_clip == [None] * 3 and too_few.training_statistics_clips == 3
    with pytest.raises(ValueError, match="Unknown adaptation"):
        plan_adaptation(embeddings, "per-clip")


def test_dominant_answer_and_too_uniform_exact():
    answers = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.3, 0.6, 0.1]])
    index, share = dominant_answer(answers)
    assert index == 0 and share == pytest.approx(0.5)
    assert not too_uniform(answers, max_share=0.5) and too_uniform(answers, max_share=0.49)
    assert not too_uniform(None) and not too_uniform(np.zeros((0, 3)))


def test_a_group_whose_answers_one_class_dominates_is_not_adapted():
    rng = np.random.default_rng(2)
    embeddings = rng.normal(0, 1, (12, 4))
    mixed = np.eye(3)[np.arange(6) % 3] * 0.8 + 0.2 / 3  # a speaker answered in three classes alike
    sad = np.tile([0.1, 0.1, 0.8], (6, 1))  # a speaker whose clips all sound like class 2
    plan = plan_adaptation(embeddings, "speaker", ["a"] * 6 + ["b"] * 6, min_clips=5, answers=np.concatenate([mixed, sad]), max_dominant_share=0.6)
    assert plan.speakers == {"a": 6} and plan.fallback == {TOO_UNIFORM: 6}
    corpus = EmbeddingStatistics.of(embeddings)
    np.testing.assert_allclose(plan.per_clip[6].mean, corpus.mean)  # b gets the corpus's statistics
    # A corpus whose answers are all one class is not adapted at all.
    uniform = plan_adaptation(embeddings, "corpus", answers=np.tile([0.05, 0.05, 0.9], (12, 1)), min_clips=5)
    assert uniform.per_clip == [None] * 12 and uniform.to_dict()["corpus_answers_too_uniform"] is True


def test_plan_for_uses_the_classifiers_single_clip_answers(whisper_classifier):
    embeddings = whisper_classifier.embed_batch(_clips(10))
    single = whisper_classifier.probabilities_from_embeddings(embeddings)
    share = dominant_answer(single)[1]
    assert plan_for(whisper_classifier, embeddings, "corpus", max_dominant_share=share + 0.01).adapted_clips == 10
    assert plan_for(whisper_classifier, embeddings, "corpus", max_dominant_share=share - 0.01).adapted_clips == 0


def test_adapted_probabilities_classify_each_group_with_its_own_statistics(whisper_classifier):
    clips = _clips(10)
    embeddings = whisper_classifier.embed_batch(clips)
    plan = plan_adaptation(embeddings, "speaker", ["x"] * 5 + ["y"] * 5, min_clips=5)
    probabilities = adapted_probabilities(whisper_classifier, embeddings, plan)
    np.testing.assert_allclose(probabilities[:5], whisper_classifier.predict_proba(clips[:5], EmbeddingStatistics.of(embeddings[:5])), atol=1e-6)
    np.testing.assert_allclose(probabilities[5:], whisper_classifier.predict_proba(clips[5:], EmbeddingStatistics.of(embeddings[5:])), atol=1e-6)


# -- evaluate_crosslingual.py --adapt -----------------------------------------------------------------
def _evaluate(model_dir, data_dir, output_dir, *extra: str) -> dict:
    import evaluate_crosslingual

    return evaluate_crosslingual.main(
        ["--model", str(model_dir), "--data_dir", str(data_dir), "--output_dir", str(output_dir), "--backend", "torch",
         "--bootstrap_resamples", "20", "--quality_gate", "false", "--progress", "false", *extra]
    )  # fmt: skip


def test_evaluate_with_speaker_and_corpus_adaptation(tiny_whisper_ser_dir, audio_emotions_dir, tmp_path, whisper_classifier):
    none = _evaluate(tiny_whisper_ser_dir, audio_emotions_dir, tmp_path / "none")
    assert none["adapt"] == "none" and none["adaptation"] is None
    assert "used no labels" not in (tmp_path / "none" / "report.md").read_text()

    speaker = _evaluate(tiny_whisper_ser_dir, audio_emotions_dir, tmp_path / "speaker", "--adapt", "speaker")
    assert speaker["adapt"] == "speaker" and speaker["n"] == none["n"]
    adaptation = speaker["adaptation"]
    # Fixture without surprised: RAVDESS actors 1-6 (12 clips each) have their own statistics; CREMA-D
    # 1001/1002, TESS OAF/YAF and SAVEE's one unprefixed group (6 clips each) are below the minimum of
    # 10 and get the corpus statistics.
    assert MIN_ADAPTATION_CLIPS == 10
    assert adaptation["speakers"] == {f"ravdess:{actor}": 12 for actor in range(1, 7)}
    assert adaptation["fallback_to_corpus_clips"] == 30 and adaptation["fallback_reasons"] == {TOO_FEW_CLIPS: 30}
    report = (tmp_path / "speaker" / "report.md").read_text()
    assert "no labels" in report and "did see the test clips" in report
    assert "6 speakers had their own statistics; 30 clips got the corpus statistics instead" in report
    on_disk = json.loads((tmp_path / "speaker" / "metrics.json").read_text())
    assert on_disk["adapt"] == "speaker" and on_disk["adaptation"]["uses_labels"] is False

    # The predictions are the predictor's own, with each speaker's statistics.
    import csv

    from ser.audio.loader import load_audio

    rows = list(csv.DictReader((tmp_path / "speaker" / "predictions.csv").open()))
    actor_one = [row for row in rows if row["speaker"] == "1"]
    waveforms = [load_audio(row["path"]) for row in actor_one]
    statistics = EmbeddingStatistics.of(whisper_classifier.embed_batch(waveforms))
    expected = whisper_classifier.predict_proba(waveforms, statistics)
    got = np.array([[float(row[f"prob_{label}"]) for label in whisper_classifier.labels] for row in actor_one])
    np.testing.assert_allclose(got, expected, atol=1e-4)

    corpus = _evaluate(tiny_whisper_ser_dir, audio_emotions_dir, tmp_path / "corpus", "--adapt", "corpus")
    assert corpus["adaptation"]["adapted_clips"] == corpus["n"] and corpus["adaptation"]["speakers"] == {}
    assert "all the clips scored here" in (tmp_path / "corpus" / "report.md").read_text()


def test_evaluate_adapt_without_an_embedding_exits_with_one_line(tiny_tdnn_dir, aesdd_dir, tmp_path):
    with pytest.raises(SystemExit) as exited:
        _evaluate(tiny_tdnn_dir, aesdd_dir, tmp_path / "out", "--adapt", "corpus")
    message = str(exited.value.code)
    assert message.startswith("error: --adapt corpus:") and "--adapt none" in message and "\n" not in message


# -- the timeline adapts to the recording ------------------------------------------------------------
@pytest.fixture(scope="module")
def sentences(espeak_speech):
    """Six espeak-ng sentences separated by 1.5 s of silence (16 kHz), and the sentences alone."""
    from ser.audio.loader import prepare_waveform

    texts = ["The quick brown fox jumps over the lazy dog.", "I did not expect to see you here today.", "Please close the door behind you.",
             "We will meet again tomorrow morning.", "That was the best film I have ever seen.", "Nobody told me about the change."]  # fmt: skip
    spoken = []
    for text in texts:
        samples, sample_rate = espeak_speech(text)
        speech = prepare_waveform(samples, sample_rate)
        loud = np.flatnonzero(np.abs(speech) > 1e-3)
        spoken.append(speech[loud[0] : loud[-1] + 1])
    gap = np.zeros(int(1.5 * 16_000), np.float32)
    recording = np.concatenate([gap] + [part for speech in spoken for part in (speech, gap)])
    return recording


def test_timeline_adapts_to_the_recording_once_it_has_enough_segments(whisper_classifier, sentences):
    from ser.inference.timeline import TimelineConfig, timeline_for_waveform

    assert TimelineConfig().adapt and TimelineConfig().min_adaptation_segments == MIN_ADAPTATION_CLIPS
    default = timeline_for_waveform(whisper_classifier, sentences, 16_000)
    assert not default.adapted and "6 segments, at least 10 needed" in default.adaptation_note
    adapted = timeline_for_waveform(whisper_classifier, sentences, 16_000, TimelineConfig(min_adaptation_segments=6))
    assert len(adapted.segments) == 6 and adapted.adapted
    assert adapted.adaptation_note == "adapted to this recording (6 segments)"
    assert all(record["adapted"] for record in adapted.records())
    cuts = [sentences[round(s.start_s * 16_000) : round(s.end_s * 16_000)] for s in adapted.segments]
    own = EmbeddingStatistics.of(whisper_classifier.embed_batch(cuts))
    got = np.array([[s.probabilities[label] for label in whisper_classifier.labels] for s in adapted.segments])
    np.testing.assert_allclose(got, whisper_classifier.predict_proba(cuts, own), atol=1e-5)

    plain = timeline_for_waveform(whisper_classifier, sentences, 16_000, TimelineConfig(adapt=False))
    assert not plain.adapted and plain.adaptation_note == "not adapted to the recording (turned off)"
    single = np.array([[s.probabilities[label] for label in whisper_classifier.labels] for s in plain.segments])
    np.testing.assert_allclose(single, whisper_classifier.predict_proba(cuts), atol=1e-5)
    assert np.abs(single - got).max() > 1e-3

    # Segments whose single-segment answers one class dominates are not adapted to, and the note says why.
    index, share = dominant_answer(single)
    uniform = timeline_for_waveform(whisper_classifier, sentences, 16_000, TimelineConfig(min_adaptation_segments=6, max_dominant_share=share - 0.01))
    assert not uniform.adapted and f"mostly sound {whisper_classifier.labels[index]} ({share:.0%} of their answers)" in uniform.adaptation_note
    np.testing.assert_allclose([[s.probabilities[label] for label in whisper_classifier.labels] for s in uniform.segments], single, atol=1e-6)

    too_few = timeline_for_waveform(whisper_classifier, sentences, 16_000, TimelineConfig(min_adaptation_segments=7))
    assert not too_few.adapted and "6 segments, at least 7 needed" in too_few.adaptation_note
    np.testing.assert_allclose([[s.probabilities[label] for label in whisper_classifier.labels] for s in too_few.segments], single, atol=1e-6)


def test_adaptation_curve_script(tiny_whisper_ser_dir, audio_emotions_dir, tmp_path):
    from scripts import adaptation_curve

    output = tmp_path / "curve.json"
    result = adaptation_curve.main([
        "--model", str(tiny_whisper_ser_dir), "--data_dir", str(audio_emotions_dir), "--speakers", "1,2",
        "--clips", "2,12", "--draws", "3", "--output", str(output), "--backend", "torch",
    ])  # fmt: skip
    assert json.loads(output.read_text()) == result
    assert result["n"] == 24 and result["speakers"] == ["ravdess:1", "ravdess:2"]
    # Drawing all twelve clips of each actor is speaker adaptation.
    assert result["accuracy_with_k_clips_of_the_speaker"]["12"] == result["accuracy"]["speaker"]


# -- speakers for --adapt speaker ---------------------------------------------------------------------
def test_speakers_are_parsed_from_corpus_file_names():
    from ser.data.corpus import Speaker, parse_speaker

    assert parse_speaker("dis-f1-b1.wav") == Speaker("emovo", "f1")
    assert parse_speaker("RAB-M3-L4.flac") == Speaker("emovo", "m3")
    assert parse_speaker("03-01-05-01-02-01-21.wav") == Speaker("ravdess", "21")
    assert parse_speaker("a01 (3).wav") == Speaker("aesdd", "3")
    assert parse_speaker("my_recording.wav") is None


def test_every_emovo_clip_gets_its_speaker():
    from conftest import SHARED_DATA

    from ser.data.corpus import scan_corpus

    emovo = SHARED_DATA / "emovo"
    if not emovo.is_dir():
        pytest.skip("../shared/data/emovo is not present")
    clips = scan_corpus(emovo).clips
    assert clips and all(clip.corpus == "emovo" for clip in clips)
    assert sorted({clip.speaker for clip in clips}) == ["f1", "f2", "f3", "m1", "m2", "m3"]


# -- the adapted head --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapted_head_dir(tiny_whisper_checkpoint_dir, tmp_path_factory):
    """A tiny WhisperSer with a second (adapted) head whose weights differ from the single-clip head's."""
    from ser.core.labels import DEFAULT_LABELS, label_maps
    from ser.models.presets import feature_extractor_for
    from ser.models.whisper_ser import from_whisper_checkpoint

    torch.manual_seed(1)
    model = from_whisper_checkpoint(
        str(tiny_whisper_checkpoint_dir), label_maps(DEFAULT_LABELS)[0], "layers=[1,2],head_hidden_size=0,ensemble_size=1,layer_pooling=concat,adapted_head=true"
    )
    with torch.no_grad():
        model.adapted_heads[0].classifier.weight.normal_(0.0, 0.5)
        model.embedding_var.uniform_(0.5, 2.0)
    directory = tmp_path_factory.mktemp("adapted_head")
    model.save_pretrained(directory)
    feature_extractor_for(model.config).save_pretrained(directory)
    return directory


def test_other_statistics_than_the_training_sets_go_to_the_adapted_head(adapted_head_dir):
    from transformers import AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(adapted_head_dir).eval()
    assert model.config.adapted_head and len(model.adapted_heads) == 1
    embedding = torch.randn(3, *model.embedding_mean.shape)
    mean, var = torch.randn_like(model.embedding_mean), torch.rand_like(model.embedding_var) + 0.5
    with torch.no_grad():
        single, _ = model.classify_embedding(embedding)
        adapted, _ = model.classify_embedding(embedding, mean, var)
        standardised = lambda m, v: ((embedding - m) / torch.sqrt(v + 1e-5)).flatten(1)  # noqa: E731
        torch.testing.assert_close(single, model.heads[0].classifier(standardised(model.embedding_mean, model.embedding_var)))
        torch.testing.assert_close(adapted, model.adapted_heads[0].classifier(standardised(mean, var)))
    # The classifier serves both heads, on every backend: the graph gives the embedding, the heads run after it.
    clips = _clips(4)
    for backend in ("torch", "onnx"):
        classifier = EmotionClassifier.from_pretrained(adapted_head_dir, backend=backend)
        embeddings = classifier.embed_batch(clips)
        statistics = EmbeddingStatistics.of(embeddings)
        with torch.no_grad():
            expected_single = torch.softmax(model.classify_embedding(torch.from_numpy(embeddings))[0], -1).numpy()
            expected_adapted = torch.softmax(
                model.classify_embedding(torch.from_numpy(embeddings), torch.from_numpy(statistics.mean).float(), torch.from_numpy(statistics.variance).float())[0], -1
            ).numpy()
        np.testing.assert_allclose(classifier.predict_proba(clips), expected_single, atol=1e-4)
        np.testing.assert_allclose(classifier.predict_proba(clips, statistics), expected_adapted, atol=1e-4)
        assert not np.allclose(expected_single, expected_adapted, atol=1e-2)


def test_calibration_uniformity_summary_exact():
    """scripts/calibration_uniformity.py: refusing sets over a threshold replaces their calibrated
    accuracy with the single-clip one; the chosen threshold maximises the mean gain of the two kinds."""
    from scripts.calibration_uniformity import summarise

    sets = [
        {"kind": "mixed", "share": 0.3, "single": 0.5, "calibrated": 0.7},
        {"kind": "mixed", "share": 0.6, "single": 0.5, "calibrated": 0.6},
        {"kind": "uniform", "share": 0.8, "single": 0.5, "calibrated": 0.2},
        {"kind": "uniform", "share": 0.5, "single": 0.5, "calibrated": 0.4},
    ]
    result = summarise(sets)
    assert result["sets"] == {"mixed": 2, "uniform": 2}
    assert result["gain_without_the_check"] == {"mixed": pytest.approx(0.15), "uniform": pytest.approx(-0.2)}
    at_055 = result["by_threshold"]["0.55"]
    assert at_055["mixed"] == {"refused": 0.5, "gain_over_single": pytest.approx(0.1)}
    assert at_055["uniform"] == {"refused": 0.5, "gain_over_single": pytest.approx(-0.05)}
    # From 0.30 to 0.45 both uniform sets are refused (mean gain 0.05), but so is half of the mixed ones.
    # Refusing at most 10% of them leaves 0.60 and up: 0.60 to 0.75 still refuse the uniform set at 0.8
    # (mean gain 0.05 again), 0.80 and up do not (-0.025); the first of the tie is chosen.
    assert result["by_threshold"]["0.45"]["mean_gain"] == pytest.approx(0.05) and result["by_threshold"]["0.55"]["mean_gain"] == pytest.approx(0.025)
    assert result["max_mixed_refused"] == 0.1 and result["chosen_threshold"] == 0.6
    assert summarise(sets, max_mixed_refused=0.5)["chosen_threshold"] == 0.3
