"""What a run is made of: the labelled corpus split into train / eval / test speakers, and the model
(a hub or local checkpoint, a preset trained from scratch, or a WhisperSer on a Whisper encoder)."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from ser import models as _register_models  # noqa: F401  (registers EmotionCnn with the Auto classes)
from ser.core.labels import (
    CANONICAL_LABELS,
    label_maps,
    parse_label_map,
)
from ser.data.corpus import Clip, corpus_name, normalise_speaker_id, scan_corpus
from ser.data.splits import (
    Split,
    SplitError,
    drop_speakers,
    make_split,
    parse_speaker_list,
)
from ser.training.arguments import DataArguments, ModelArguments, TrainSetupError

logger = logging.getLogger("train")

# -- data -----------------------------------------------------------------------------------------
def ordered_labels(found: list[str]) -> list[str]:
    """Canonical order for known labels, then any --label_map extras alphabetically."""
    return [label for label in CANONICAL_LABELS if label in found] + sorted(set(found) - set(CANONICAL_LABELS))


def scan_corpora(data_args: DataArguments) -> tuple[list[str], list[Clip]]:
    """Every ``--data_dir`` scanned: the labels found in any of them (canonical order) and all clips,
    each with its corpus (parsed from the file name, else the folder's name) and speaker."""
    try:
        label_map = parse_label_map(data_args.label_map)
    except ValueError as error:
        raise TrainSetupError(f"--label_map: {error}") from error
    excluded = [label.strip() for label in data_args.exclude_labels.split(",") if label.strip()]
    found: set[str] = set()
    clips: list[Clip] = []
    folders = data_args.data_dirs()
    for data_dir in folders:
        corpus = scan_corpus(data_dir, label_map=label_map, exclude_labels=excluded, speaker_from=data_args.speaker_from)
        if corpus.unknown_folders:
            raise TrainSetupError(
                f"Unknown class folder(s) in {corpus.root}: {corpus.unknown_folders}. Expected folders named after the emotions "
                f"({', '.join(CANONICAL_LABELS)} or their AESDD names anger, disgust, fear, happiness, sadness; any case). "
                "Map the others with --label_map, e.g. --label_map 'calm=neutral' (or map them onto a label in --exclude_labels)."
            )
        if corpus.empty_folders:
            raise TrainSetupError(
                f"Class folder(s) without audio clips in {corpus.root}: {corpus.empty_folders}. "
                "Add clips or leave those classes out with --exclude_labels."
            )
        logger.info("Found %d clips in %s: %s (excluded: %s)", len(corpus.clips), corpus.root, corpus.label_counts(), corpus.excluded_counts or "none")
        found |= set(corpus.labels)
        # Several folders: a clip no file-name pattern knows belongs to its folder's corpus.
        fallback = corpus_name(data_dir) if len(folders) > 1 else None
        clips += [clip if clip.corpus or fallback is None else replace(clip, corpus=fallback) for clip in corpus.clips]
    labels = ordered_labels(sorted(found))
    if len(labels) < 2:
        raise TrainSetupError(f"Only {labels} left after --exclude_labels {excluded}; a classifier needs at least two classes.")
    return labels, clips


def load_corpus_split(data_args: DataArguments, seed: int) -> tuple[list[str], Split]:
    labels, all_clips = scan_corpora(data_args)
    clips = all_clips
    if excluded_speakers := parse_speaker_list(data_args.exclude_speakers):
        try:
            clips = drop_speakers(clips, excluded_speakers, flag="--exclude_speakers")
        except SplitError as error:
            raise TrainSetupError(str(error)) from error
        logger.info("--exclude_speakers %s: %d clips left out", data_args.exclude_speakers, len(all_clips) - len(clips))
    held_out: list[Clip] = []
    if test_corpora := [name.strip().lower() for name in (data_args.test_corpora or "").split(",") if name.strip()]:
        known = sorted({clip.corpus for clip in clips if clip.corpus})
        if unknown := [name for name in test_corpora if name not in known]:
            raise TrainSetupError(f"--test_corpora {unknown}: not among the corpora of --data_dir ({', '.join(known)}).")
        held_out = [clip for clip in clips if clip.corpus in test_corpora]
        clips = [clip for clip in clips if clip.corpus not in test_corpora]
        if not clips:
            raise TrainSetupError("--test_corpora holds out every corpus: nothing is left to train on.")
        logger.info("--test_corpora %s: %d clips held out as the test split", ",".join(test_corpora), len(held_out))
    split = make_split(
        clips,
        strategy=data_args.split,
        eval_fraction=data_args.eval_fraction,
        test_fraction=0.0 if held_out and not data_args.test_speakers else data_args.test_fraction,
        seed=seed,
        eval_speakers=parse_speaker_list(data_args.eval_speakers),
        test_speakers=parse_speaker_list(data_args.test_speakers),
        allow_random_fallback=data_args.allow_random_fallback,
    )
    if held_out:
        split.test = split.test + held_out
        if split.strategy == "speaker":
            groups = sorted({(clip.corpus, normalise_speaker_id(clip.speaker)) for clip in held_out if clip.speaker is not None})
            split.speakers["test"] = sorted(set(split.speakers.get("test", [])) | set(groups))
    return labels, split


def subset(clips: list[Clip], limit: int | None, seed: int) -> list[Clip]:
    if limit is None or limit >= len(clips):
        return clips
    keep = sorted(np.random.default_rng(seed).choice(len(clips), size=limit, replace=False))
    return [clips[index] for index in keep]


# -- model ----------------------------------------------------------------------------------------
def build_model(model_args: ModelArguments, labels: list[str]):
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoModelForAudioClassification,
    )

    from ser.models.presets import (
        apply_config_overrides,
        config_from_spec,
        feature_extractor_for,
    )

    id2label, label2id = label_maps(labels)
    if model_args.from_scratch:
        try:
            config = config_from_spec(model_args.from_scratch)
        except ValueError as error:
            raise TrainSetupError(f"--from_scratch: {error}") from error
        config.id2label, config.label2id = id2label, label2id
        if model_args.config_overrides:
            try:
                apply_config_overrides(config, model_args.config_overrides)
            except ValueError as error:
                raise TrainSetupError(f"--config_overrides: {error}") from error
        if hasattr(config, "use_weighted_layer_sum"):
            config.use_weighted_layer_sum = model_args.use_weighted_layer_sum
        model = AutoModelForAudioClassification.from_config(config)
        if getattr(config, "use_weighted_layer_sum", False):
            _check_weighted_layer_sum(model, int(feature_extractor_for(config).sampling_rate))
        return model, feature_extractor_for(config)

    name = model_args.model_name_or_path
    hub_kwargs = {"revision": model_args.model_revision, "cache_dir": model_args.cache_dir}
    try:
        config = AutoConfig.from_pretrained(name, **hub_kwargs)
    except (OSError, ValueError) as error:
        if model_args.config_overrides:
            raise TrainSetupError(
                f"--config_overrides only applies with --from_scratch or a Whisper checkpoint, and the config of {name!r} cannot be read to tell: {error}"
            ) from error
        raise TrainSetupError(f"Cannot load --model_name_or_path {name!r} as an audio-classification model: {error}") from error
    if config.model_type == "whisper":
        return _build_whisper_ser(model_args, id2label, hub_kwargs)
    if model_args.config_overrides:
        raise TrainSetupError("--config_overrides only applies with --from_scratch or a Whisper checkpoint (other checkpoints keep their own config).")
    try:
        extra = {"use_weighted_layer_sum": model_args.use_weighted_layer_sum} if hasattr(config, "use_weighted_layer_sum") else {}
        model = AutoModelForAudioClassification.from_pretrained(
            name,
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,
            **hub_kwargs,
            **extra,
        )
    except (OSError, ValueError) as error:
        raise TrainSetupError(f"Cannot load --model_name_or_path {name!r} as an audio-classification model: {error}") from error
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(name, **hub_kwargs)
    except (OSError, ValueError):
        logger.warning("%s has no feature extractor; using the default raw-waveform one at 16 kHz.", name)
        feature_extractor = feature_extractor_for(model.config)
    if getattr(model.config, "use_weighted_layer_sum", False):
        _check_weighted_layer_sum(model, int(feature_extractor.sampling_rate))
    return model, feature_extractor


def _build_whisper_ser(model_args: ModelArguments, id2label: dict[int, str], hub_kwargs: dict):
    from ser.models.presets import feature_extractor_for
    from ser.models.whisper_ser import from_whisper_checkpoint

    try:
        model = from_whisper_checkpoint(model_args.model_name_or_path, id2label, model_args.config_overrides, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise TrainSetupError(f"Cannot build WhisperSer from {model_args.model_name_or_path!r}: {error}") from error
    model.config.trainable_encoder_layers = model_args.trainable_encoder_layers
    model.freeze_encoder(model_args.trainable_encoder_layers)
    logger.info(
        "WhisperSer on %s: hidden states %s of %d blocks, %s",
        model_args.model_name_or_path,
        model.config.layers,
        model.config.blocks_used,
        "encoder frozen" if model.encoder_is_frozen else f"top {model_args.trainable_encoder_layers} blocks fine-tuned",
    )
    return model, feature_extractor_for(model.config)


def _check_weighted_layer_sum(model, sample_rate: int) -> None:
    """One tiny forward pass: some transformers releases return one hidden state fewer than the
    weighted layer sum has weights (wav2vec2 in 5.x), which would otherwise fail at the first step."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(input_values=torch.zeros(1, sample_rate))
    except RuntimeError as error:
        raise TrainSetupError(
            f"--use_weighted_layer_sum does not work for {type(model).__name__} with this transformers version ({error}); "
            "train without it."
        ) from error
    finally:
        model.train(was_training)


