"""The Whisper path: importing CTranslate2 weights, WhisperSer on the clip's own length, and train.py on it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct

import numpy as np
import pytest
import torch

from ser.models.whisper_import import (
    WHISPER_BASE_PACKAGES,
    WhisperImportError,
    import_whisper,
    join_parts,
    read_ctranslate2_model,
)


def _ctranslate2_copy(checkpoint_dir, output_dir):
    ctranslate2 = pytest.importorskip("ctranslate2")
    ctranslate2.converters.TransformersConverter(str(checkpoint_dir)).convert(str(output_dir), quantization="float16")
    return output_dir


# -- import --------------------------------------------------------------------------------------
def test_ctranslate2_round_trip_gives_back_the_tensors(tiny_whisper_checkpoint_dir, tmp_path):
    from safetensors.torch import load_file

    ct2_dir = _ctranslate2_copy(tiny_whisper_checkpoint_dir, tmp_path / "ct2")
    imported = import_whisper(tmp_path / "imported", model_dir=ct2_dir)
    original = load_file(tiny_whisper_checkpoint_dir / "model.safetensors")
    back = load_file(imported / "model.safetensors")
    assert set(original) <= set(back) | {"proj_out.weight"}
    for name, tensor in original.items():
        expected = tensor.to(torch.float16).float()  # CTranslate2 stored float16
        assert torch.equal(back[name], expected), name
    # K has no bias in Whisper: the fused QKV bias must not have leaked into one.
    assert "model.encoder.layers.0.self_attn.k_proj.bias" not in back
    config = json.loads((imported / "config.json").read_text())
    assert (config["encoder_layers"], config["encoder_attention_heads"], config["d_model"]) == (2, 2, 16)
    assert (imported / "preprocessor_config.json").is_file()


def _tiny_model_bin(version: int) -> bytes:
    def string(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    return struct.pack("<I", version) + string("WhisperSpec") + struct.pack("<II", 3, 0) + struct.pack("<I", 0)


def test_other_binary_versions_are_refused():
    assert read_ctranslate2_model(_tiny_model_bin(6)).spec == "WhisperSpec"
    with pytest.raises(WhisperImportError, match="binary version 5"):
        read_ctranslate2_model(_tiny_model_bin(5))


def test_truncated_file_is_refused():
    with pytest.raises(WhisperImportError, match="truncated"):
        read_ctranslate2_model(_tiny_model_bin(6)[:-2])


def test_joined_parts_are_checked_against_sha256(tmp_path):
    first, second = tmp_path / "a.part1", tmp_path / "a.part2"
    first.write_bytes(b"abc")
    second.write_bytes(b"def")
    assert join_parts([first, second], hashlib.sha256(b"abcdef").hexdigest()) == b"abcdef"
    with pytest.raises(WhisperImportError, match="sha256"):
        join_parts([second, first], hashlib.sha256(b"abcdef").hexdigest())


whisper_base_installed = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in WHISPER_BASE_PACKAGES.packages) or importlib.util.find_spec("ctranslate2") is None,
    reason="the whisper-base weight packages (requirements-train.txt) or ctranslate2 are not installed",
)


@whisper_base_installed
def test_imported_whisper_base_matches_ctranslate2_encoder(tmp_path):
    import shutil

    import ctranslate2
    from transformers import WhisperFeatureExtractor, WhisperModel

    from ser.models.whisper_import import find_package_parts

    imported = import_whisper(tmp_path / "whisper-base")
    parts, package_dir = find_package_parts()
    ct2_dir = tmp_path / "ct2"
    ct2_dir.mkdir()
    (ct2_dir / "model.bin").write_bytes(join_parts(parts))
    for name in ("config.json", "vocabulary.txt"):
        shutil.copyfile(package_dir / name, ct2_dir / name)
    time = np.arange(48_000) / 16_000
    clip = (0.1 * np.sin(2 * np.pi * 180 * time) * (1 + np.sin(2 * np.pi * 3 * time))).astype(np.float32)
    features = WhisperFeatureExtractor.from_pretrained(imported)(clip, sampling_rate=16_000, return_tensors="np").input_features
    with torch.no_grad():
        ours = WhisperModel.from_pretrained(imported).encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    reference = np.array(ctranslate2.models.Whisper(str(ct2_dir), compute_type="float32").encode(ctranslate2.StorageView.from_array(features)))
    assert np.abs(ours - reference).max() < 2e-3


# -- the model ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper_ser(tiny_whisper_ser_dir):
    from transformers import AutoModelForAudioClassification

    return AutoModelForAudioClassification.from_pretrained(tiny_whisper_ser_dir).eval()


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    time = np.arange(int(seconds * 16_000)) / 16_000
    return (0.2 * np.sin(2 * np.pi * (150 + 30 * seed) * time) * (1 + np.sin(2 * np.pi * 4 * time)) + 0.01 * rng.standard_normal(time.size)).astype(np.float32)


def test_log_mel_matches_whisper_feature_extractor(whisper_ser):
    from transformers import WhisperFeatureExtractor

    clip = _speechlike(30.0, 0)
    expected = WhisperFeatureExtractor()(clip, sampling_rate=16_000, return_tensors="pt").input_features
    log_mel, frame_mask = whisper_ser.log_mel(torch.from_numpy(clip)[None], torch.tensor([clip.size]))
    assert log_mel.shape == expected.shape and bool(frame_mask.all())
    assert (log_mel - expected).abs().max() < 1e-4


def test_hidden_states_match_transformers_encoder_on_30_s(whisper_ser, tiny_whisper_checkpoint_dir):
    from transformers import WhisperFeatureExtractor, WhisperModel

    clip = _speechlike(30.0, 1)
    features = WhisperFeatureExtractor()(clip, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        reference = WhisperModel.from_pretrained(tiny_whisper_checkpoint_dir).encoder(features, output_hidden_states=True).hidden_states
        states, mask = whisper_ser.encoder(features, torch.ones(1, features.shape[-1]))
    assert mask.shape == (1, 1500)
    # The stored encoder is float16; the reference checkpoint float32.
    for index in range(len(states) - 1):  # transformers applies the final layer norm to its last state
        assert (states[index] - reference[index]).abs().max() < 2e-2 * reference[index].abs().max()


def test_batch_of_unequal_clips_gives_each_clips_own_probabilities(tiny_whisper_ser_dir):
    from ser.inference.predictor import EmotionClassifier

    classifier = EmotionClassifier.from_pretrained(tiny_whisper_ser_dir, backend="torch")
    clips = [_speechlike(seconds, seed) for seed, seconds in enumerate((0.7, 2.3, 1.41, 3.0))]
    batched = classifier.classify_batch(clips)
    alone = [classifier.classify_batch([clip])[0] for clip in clips]
    for together, single in zip(batched, alone):
        for label in classifier.labels:
            assert together.probabilities[label] == pytest.approx(single.probabilities[label], abs=1e-5)


def test_shorter_clip_runs_less_than_30_s_of_encoder(whisper_ser):
    with torch.no_grad():
        log_mel, frame_mask = whisper_ser.log_mel(torch.from_numpy(_speechlike(3.0, 2))[None], torch.tensor([48_000]))
        states, mask = whisper_ser.encoder(log_mel, frame_mask)
    assert log_mel.shape[-1] == 300 and states[-1].shape[1] == 150


def test_weights_are_stored_float16_and_load_float32(tiny_whisper_ser_dir, whisper_ser):
    from safetensors import safe_open

    with safe_open(str(tiny_whisper_ser_dir / "model.safetensors"), "pt") as stored:
        dtypes = {name: stored.get_tensor(name).dtype for name in stored.keys()}
    assert {dtype for name, dtype in dtypes.items() if name.startswith("encoder.")} == {torch.float16}
    assert dtypes["embedding_var"] == torch.float32  # statistics keep their range
    assert {parameter.dtype for parameter in whisper_ser.parameters()} == {torch.float32}


def test_only_the_blocks_up_to_the_deepest_layer_are_kept(tiny_whisper_checkpoint_dir):
    from ser.models.whisper_ser import from_whisper_checkpoint

    model = from_whisper_checkpoint(str(tiny_whisper_checkpoint_dir), {0: "a", 1: "b"}, "layers=[0,1]")
    assert len(model.encoder.layers) == 1
    with pytest.raises(ValueError, match="layers must be hidden-state indices"):
        from_whisper_checkpoint(str(tiny_whisper_checkpoint_dir), {0: "a", 1: "b"}, "layers=[3]")


def test_freeze_encoder_top_layers(tiny_whisper_checkpoint_dir):
    from ser.models.whisper_ser import from_whisper_checkpoint

    model = from_whisper_checkpoint(str(tiny_whisper_checkpoint_dir), {0: "a", 1: "b"}, "layers=[1,2]")
    model.freeze_encoder(0)
    assert model.encoder_is_frozen and all(parameter.requires_grad for parameter in model.heads.parameters())
    model.freeze_encoder(1)
    assert not model.encoder_is_frozen
    assert all(parameter.requires_grad for parameter in model.encoder.layers[1].parameters())
    assert not any(parameter.requires_grad for parameter in model.encoder.layers[0].parameters())
    assert not model.encoder.conv1.weight.requires_grad


def test_too_long_input_says_to_window(whisper_ser):
    waveform = torch.zeros(1, 16_000 * 31)
    with pytest.raises(ValueError, match="score it in windows"):
        whisper_ser(input_values=waveform)


# -- the embedding cache and train.py -----------------------------------------------------------------
def test_state_fingerprints_are_shared_by_models_with_the_same_blocks(tiny_whisper_checkpoint_dir):
    from ser.inference.embeddings import state_fingerprints
    from ser.models.whisper_ser import from_whisper_checkpoint

    shallow = from_whisper_checkpoint(str(tiny_whisper_checkpoint_dir), {0: "a", 1: "b"}, "layers=[1]")
    deep = from_whisper_checkpoint(str(tiny_whisper_checkpoint_dir), {0: "a", 1: "b"}, "layers=[0,2],head_hidden_size=0")
    assert state_fingerprints(deep)[:2] == state_fingerprints(shallow)
    with torch.no_grad():
        deep.encoder.layers[1].fc1.weight.add_(1.0)
    changed = state_fingerprints(deep)
    assert changed[:2] == state_fingerprints(shallow) and changed[2] != state_fingerprints(shallow)[-1]


def test_train_whisper_with_cached_embeddings(audio_emotions_dir, tiny_whisper_checkpoint_dir, tmp_path, caplog):
    import logging

    from transformers import AutoModelForAudioClassification

    import train

    cache = tmp_path / "cache"
    common = [
        "--data_dir", str(audio_emotions_dir), "--model_name_or_path", str(tiny_whisper_checkpoint_dir),
        "--config_overrides", "layers=[1,2],head_hidden_size=8", "--embedding_copies", "speed=0.9",
        "--embedding_cache_dir", str(cache), "--test_speakers", "5,6", "--eval_speakers", "4",
        "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
        "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="ser.inference.embeddings"):
        assert train.main([*common, "--output_dir", str(tmp_path / "first")]) == 0
    assert "Embedding" in caplog.text
    stored = sorted(cache.rglob("*.npy"))
    assert stored  # every hidden state of every clip and copy
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ser.inference.embeddings"):
        assert train.main([*common, "--config_overrides", "layers=[0,2],head_hidden_size=0", "--output_dir", str(tmp_path / "second")]) == 0
    assert "Embedding" not in caplog.text  # other layers of the same blocks: all from the cache
    assert sorted(cache.rglob("*.npy")) == stored

    model = AutoModelForAudioClassification.from_pretrained(tmp_path / "first")
    assert model.config.model_type == "whisper_ser" and model.config.layers == [1, 2]
    # The head was trained on standardised embeddings: the training statistics are stored.
    assert not torch.allclose(model.embedding_var, torch.ones_like(model.embedding_var))
    metrics = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert metrics["n"] > 0


def test_train_whisper_fine_tuning_top_block(audio_emotions_dir, tiny_whisper_checkpoint_dir, tmp_path):
    import train

    output = tmp_path / "run"
    code = train.main([
        "--data_dir", str(audio_emotions_dir), "--model_name_or_path", str(tiny_whisper_checkpoint_dir),
        "--trainable_encoder_layers", "1", "--config_overrides", "layers=[2]", "--test_speakers", "5,6",
        "--eval_fraction", "0", "--max_train_samples", "16", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
        "--save_strategy", "no", "--report_to", "none", "--output_dir", str(output),
    ])  # fmt: skip
    assert code == 0
    assert_only_the_top_block_changed(output, tiny_whisper_checkpoint_dir)


def assert_only_the_top_block_changed(output, checkpoint_dir):
    """Block 2 of the tiny checkpoint was fine-tuned in ``output``; block 1 is the checkpoint's, bit for bit."""
    from safetensors.torch import load_file
    from transformers import AutoModelForAudioClassification

    trained = AutoModelForAudioClassification.from_pretrained(output)
    checkpoint = load_file(checkpoint_dir / "model.safetensors")
    top = checkpoint["model.encoder.layers.1.fc1.weight"].to(torch.float16).float()
    bottom = checkpoint["model.encoder.layers.0.fc1.weight"].to(torch.float16).float()
    assert torch.equal(trained.encoder.layers[0].fc1.weight.data, bottom)  # frozen
    assert not torch.equal(trained.encoder.layers[1].fc1.weight.data, top)  # fine-tuned
    return trained


def test_embedding_from_a_cached_state_is_the_embedding(whisper_ser, tiny_whisper_ser_dir):
    """Partial fine-tuning's shortcut: blocks above a cached (padded, fp16-free) state give the same
    embedding as the whole encoder on the waveform, clip by clip in a batch of unequal lengths."""
    from ser.training.partial_finetune import cached_states, embeddings_from_states

    from transformers import AutoFeatureExtractor

    model, feature_extractor = whisper_ser.eval(), AutoFeatureExtractor.from_pretrained(tiny_whisper_ser_dir)
    clips = [np.random.default_rng(seed).normal(0, 0.1, length).astype(np.float32) for seed, length in ((0, 8_000), (1, 12_345), (2, 16_000))]
    batch = feature_extractor(clips, sampling_rate=16_000, padding=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.embed(batch["input_values"], batch["attention_mask"]).numpy()
        for state in range(min(model.config.layers) + 1):
            hidden, mask = model.hidden_state(batch["input_values"], batch["attention_mask"], state)
            np.testing.assert_allclose(model.embed_from_state(hidden, mask, state).numpy(), expected, atol=1e-4)
    states = cached_states(model, feature_extractor, clips, 1)
    assert [state.dtype for state in states] == [torch.float16] * 3 and len(states[0]) < len(states[2])
    np.testing.assert_allclose(embeddings_from_states(model, states, 1), expected, atol=2e-2)
    with pytest.raises(ValueError, match="above the chosen layers"):
        model.embed_from_state(hidden, mask, max(model.config.layers) + 1)


def test_reverse_gradient_flips_and_scales_exactly():
    from ser.training.partial_finetune import reverse_gradient

    inputs = torch.tensor([1.0, -2.0], requires_grad=True)
    (reverse_gradient(inputs, 0.5) * torch.tensor([3.0, 4.0])).sum().backward()
    assert torch.equal(inputs.grad, torch.tensor([-1.5, -2.0]))


def test_train_whisper_top_block_from_cached_states(audio_emotions_dir, tiny_whisper_checkpoint_dir, tmp_path):
    import train

    output = tmp_path / "run"
    code = train.main([
        "--data_dir", str(audio_emotions_dir), "--model_name_or_path", str(tiny_whisper_checkpoint_dir),
        "--trainable_encoder_layers", "1", "--cache_frozen_states", "true", "--head_solver", "lbfgs",
        "--config_overrides", "layers=[1,2],head_hidden_size=0,ensemble_size=1,layer_pooling=concat,adapted_head=true",
        "--corpus_adversarial_weight", "0.1", "--embedding_copies", "gain_db=-6",
        "--test_speakers", "5,6", "--eval_fraction", "0", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-3", "--embedding_cache_dir", str(tmp_path / "cache"),
        "--save_strategy", "no", "--report_to", "none", "--output_dir", str(output),
    ])  # fmt: skip
    assert code == 0
    trained = assert_only_the_top_block_changed(output, tiny_whisper_checkpoint_dir)  # below the cached state: untouched
    assert float(trained.adapted_heads[0].classifier.weight.abs().sum()) > 0  # refitted after fine-tuning
    for name in ("metrics.json", "metrics_speaker_adapted.json"):
        assert json.loads((output / name).read_text())["n"] > 0


def test_cached_states_need_layers_above_them(audio_emotions_dir, tiny_whisper_checkpoint_dir, tmp_path, caplog):
    import train

    code = train.main([
        "--data_dir", str(audio_emotions_dir), "--model_name_or_path", str(tiny_whisper_checkpoint_dir),
        "--trainable_encoder_layers", "1", "--cache_frozen_states", "true", "--head_solver", "lbfgs",
        "--config_overrides", "layers=[0,2],head_hidden_size=0,ensemble_size=1,layer_pooling=concat",
        "--test_speakers", "5,6", "--eval_fraction", "0", "--output_dir", str(tmp_path / "run"), "--report_to", "none",
    ])  # fmt: skip
    assert code != 0 and "must all lie at or above hidden state 1" in caplog.text
    caplog.clear()
    code = train.main([
        "--data_dir", str(audio_emotions_dir), "--model_name_or_path", str(tiny_whisper_checkpoint_dir),
        "--trainable_encoder_layers", "1", "--cache_frozen_states", "true", "--head_solver", "lbfgs",
        "--config_overrides", "layers=[1,2],head_hidden_size=0,ensemble_size=1,layer_pooling=concat", "--embedding_copies", "reverb=1",
        "--test_speakers", "5,6", "--eval_fraction", "0", "--output_dir", str(tmp_path / "run2"), "--report_to", "none",
    ])  # fmt: skip
    assert code == 1 and "--embedding_copies: Bad fixed copy 'reverb=1'" in caplog.text


def test_mixup_with_a_frozen_encoder_is_refused(audio_emotions_dir, tiny_whisper_checkpoint_dir, tmp_path):
    import train

    code = train.main([
        "--data_dir", str(audio_emotions_dir), "--model_name_or_path", str(tiny_whisper_checkpoint_dir),
        "--mixup_alpha", "0.2", "--test_speakers", "5,6", "--eval_fraction", "0", "--output_dir", str(tmp_path / "run"),
        "--embedding_cache_dir", str(tmp_path / "cache"), "--report_to", "none",
    ])  # fmt: skip
    assert code == 1
