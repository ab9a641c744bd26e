"""Named configs for ``train.py --from_scratch``: small models that train on a CPU."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from transformers import (
    AutoConfig,
    PretrainedConfig,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
)

from ser.audio.loader import TARGET_SAMPLE_RATE

from .emotion_cnn import EmotionCnnConfig

PRESETS: dict[str, Callable[[], PretrainedConfig]] = {
    # Dilated 1-D convolutions over mean-normalised log-mel plus the utterance's average spectrum,
    # ~0.19 M parameters, a few ms per 3 s clip.
    "emotion-tdnn-small": lambda: EmotionCnnConfig(
        encoder_type="tdnn",
        channels=(128, 128, 128, 128),
        feature_normalization="utterance_mean",
        append_utterance_spectrum=True,
    ),
    # The bundled model's architecture (chosen by actor-fold cross-validation on RAVDESS actors 1-20:
    # scripts/cross_validate_recipes.sh, model_card.md): the TDNN above on a 64 ms window with 128 mel
    # bins, which resolves the harmonics (pitch) that a 25 ms window smears; frames 35 dB below the
    # loudest are ignored, so the silence around a sentence does not shift the statistics; a deep
    # ensemble of 5 members in one checkpoint.
    "emotion-tdnn-ensemble": lambda: EmotionCnnConfig(
        encoder_type="tdnn",
        channels=(128, 128, 128, 128),
        feature_normalization="utterance_mean",
        append_utterance_spectrum=True,
        n_fft=1024,
        num_mel_bins=128,
        silence_threshold_db=35.0,
        ensemble_size=5,
    ),
    # A 2-D log-mel CNN, ~0.58 M parameters, ~16 ms per 3 s clip on 2 cores (slower to train).
    "emotion-cnn-small": lambda: EmotionCnnConfig(),
    # A wav2vec2 small enough to train from scratch on a CPU (and to test the wav2vec2 code path).
    "wav2vec2-tiny": lambda: Wav2Vec2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        conv_dim=(64, 64, 64, 64, 64, 64, 64),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        classifier_proj_size=32,
    ),
}


def config_from_spec(spec: str) -> PretrainedConfig:
    """A preset name, or a path to a ``config.json`` (any architecture transformers knows)."""
    if spec in PRESETS:
        return PRESETS[spec]()
    path = Path(spec)
    if path.is_file() or (path.is_dir() and (path / "config.json").is_file()):
        config_file = path if path.is_file() else path / "config.json"
        config_dict = json.loads(config_file.read_text())
        if "model_type" not in config_dict:
            raise ValueError(f"{config_file} has no 'model_type'; it must be a transformers config.json.")
        return AutoConfig.for_model(**config_dict)
    raise ValueError(f"Unknown config {spec!r}: give a preset ({', '.join(PRESETS)}) or a path to a config.json.")


def apply_config_overrides(config: PretrainedConfig, overrides: str) -> None:
    """Set attributes from ``"name=value,name=value"``; values are JSON (``1``, ``0.2``, ``null``, ``[1,2]``) or strings.

    Only attributes the config already has can be set, so a typo fails instead of being ignored.
    """
    for item in _split_top_level(overrides):
        name, separator, raw = item.partition("=")
        name = name.strip()
        if not separator or not name:
            raise ValueError(f"expected name=value, got {item!r}")
        if not hasattr(config, name):
            raise ValueError(f"{type(config).__name__} has no attribute {name!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip()
        setattr(config, name, value)
    # Re-run the config's own validation on the result.
    type(config)(**config.to_dict())


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so ``channels=[64,64],dropout=0.2`` gives two items."""
    items, depth, current = [], 0, []
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item for item in items if item.strip()]


def feature_extractor_for(config: PretrainedConfig) -> Wav2Vec2FeatureExtractor:
    """Raw-waveform feature extractor matching ``config``.

    wav2vec2 with group-norm feature encoders (like wav2vec2-base) must not be given an
    attention mask; every other architecture here is padded with one.
    """
    uses_attention_mask = not (config.model_type == "wav2vec2" and getattr(config, "feat_extract_norm", "group") == "group")
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=TARGET_SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=uses_attention_mask,
    )
