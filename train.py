#!/usr/bin/env python
"""Fine-tune (or train from scratch) an audio-classification model for speech emotion recognition.

    python train.py --data_dir /path/to/audio-emotions --output_dir runs/w2v2-base \
        --model_name_or_path facebook/wav2vec2-base --num_train_epochs 10
    python train.py configs/bundled_model.json            # every flag from a JSON file
    python train.py configs/bundled_model.json --num_train_epochs 1   # ... with CLI overrides

Every transformers TrainingArguments flag works; see ``python train.py --help``. The held-out test
split is scored at the end and written to ``<output_dir>/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ser import models as _register_models  # noqa: F401  (registers EmotionCnn with the Auto classes)
from ser.audio import AudioError
from ser.augment import AugmentConfig
from ser.corpus import Clip, CorpusError, scan_corpus
from ser.labels import CANONICAL_LABELS, DEFAULT_EXCLUDED_LABELS, label_maps, parse_label_map
from ser.splits import Split, SplitError, drop_speakers, make_split, parse_speaker_list

logger = logging.getLogger("train")

#: Our defaults for TrainingArguments the user did not set (on the command line or in the JSON file).
TRAINING_DEFAULTS: dict[str, object] = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "macro_f1",
    "learning_rate": 3e-5,
    "warmup_steps": 0.1,
    "logging_steps": 10,
    "report_to": "none",
    "remove_unused_columns": False,
    "dataloader_num_workers": 0,
}
#: Frozen-encoder models also score the test split with each test speaker's own statistics, here.
SPEAKER_ADAPTED_METRICS = "metrics_speaker_adapted.json"
#: A randomly initialised model wants a much larger step than fine-tuning does.
FROM_SCRATCH_LEARNING_RATE = 1e-3


class TrainSetupError(RuntimeError):
    """Something about the inputs that stops training before it starts; the message says what to do."""


@dataclass
class DataArguments:
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Corpus with one folder per class: Audio Emotions (Emotions/Angry, ...; the folder itself or its parent) or AESDD (anger, ...). Required."},
    )
    label_map: str | None = field(
        default=None,
        metadata={"help": "Map folder names onto labels: 'calm=neutral,joy=happy' or a JSON object. Folders that map to nothing are an error."},
    )
    exclude_labels: str = field(
        default=",".join(DEFAULT_EXCLUDED_LABELS),
        metadata={"help": "Comma-separated labels to leave out ('' keeps every class)."},
    )
    split: Literal["speaker", "random"] = field(
        default="speaker",
        metadata={"help": "'speaker': whole speakers are held out for eval and test (speaker-independent). 'random': clip-level split (the thesis protocol; same voices in train and test)."},
    )
    eval_fraction: float = field(default=0.15, metadata={"help": "Share of all clips for the eval split (model selection); 0 disables evaluation during training."})
    test_fraction: float = field(default=0.2, metadata={"help": "Share of all clips for the held-out test split scored into metrics.json."})
    split_seed: int | None = field(default=None, metadata={"help": "Seed for the split (default: --seed)."})
    test_speakers: str | None = field(
        default=None,
        metadata={"help": "Comma-separated speakers for the test split, e.g. '21,22,23,24' or 'ravdess:21,crema-d:1001' (overrides --test_fraction)."},
    )
    eval_speakers: str | None = field(default=None, metadata={"help": "Comma-separated speakers for the eval split (overrides --eval_fraction)."})
    exclude_speakers: str | None = field(
        default=None,
        metadata={"help": "Comma-separated speakers left out of every split, e.g. the final test actors during cross-validation (see scripts/cross_validate.py)."},
    )
    allow_random_fallback: bool = field(
        default=False,
        metadata={"help": "With --split speaker, split clips whose file name names no speaker at random instead of stopping with an error."},
    )
    max_duration_s: float = field(
        default=4.0,
        metadata={"help": "Training clips longer than this are randomly cropped to it (seconds; 0 = no crop)."},
    )
    eval_max_duration_s: float | None = field(
        default=None,
        metadata={"help": "Eval/test clips longer than this are centre-cropped (seconds; default: whole clips)."},
    )
    class_balance: Literal["none", "weighted_loss", "sampler"] = field(
        default="weighted_loss",
        metadata={"help": "Counter class imbalance: class-weighted cross-entropy, a class-balanced sampler, or nothing."},
    )
    augment: bool = field(default=True, metadata={"help": "Waveform augmentation of the training split (noise, gain, speed; see below)."})
    noise_prob: float = field(default=0.3, metadata={"help": "Probability of adding white noise to a training clip."})
    noise_snr_db_min: float = field(default=15.0, metadata={"help": "Lowest SNR (dB) of the added noise."})
    noise_snr_db_max: float = field(default=35.0, metadata={"help": "Highest SNR (dB) of the added noise."})
    gain_prob: float = field(default=0.5, metadata={"help": "Probability of a random gain."})
    max_gain_db: float = field(default=6.0, metadata={"help": "Random gain is drawn from [-max_gain_db, +max_gain_db]."})
    speed_prob: float = field(default=0.0, metadata={"help": "Probability of speed perturbation (changes pitch too, so off by default)."})
    speed_factors: str = field(default="0.9,1.1", metadata={"help": "Comma-separated speed factors to draw from."})
    mixup_alpha: float = field(
        default=0.0,
        metadata={"help": "Mixup: train on mixtures of two clips' waveforms and labels, weight ~ Beta(alpha, alpha); 0 disables."},
    )
    embedding_copies: str = field(
        default="",
        metadata={"help": "Frozen Whisper encoders only: fixed augmented copies of every training clip, embedded once and cached beside the original, e.g. 'speed=0.88,speed=1.12,noise_snr_db=20' (the random waveform augmentation above needs an encoder pass per epoch and is not used there)."},
    )
    embedding_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where frozen-encoder embeddings are cached (default: $SER_CACHE_DIR/embeddings, else ~/.cache/ser/embeddings)."},
    )
    standardize_per_speaker: bool = field(
        default=False,
        metadata={"help": "Frozen Whisper encoders only: train the head on embeddings standardised with each training speaker's own statistics (as adapted prediction uses a speaker's or corpus's), instead of the training set's. The model still stores the training set's statistics for single clips."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training clips (a seeded random subset; for quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval and test clips each."})

    def augment_config(self) -> AugmentConfig | None:
        if not self.augment:
            return None
        return AugmentConfig(
            noise_prob=self.noise_prob,
            noise_snr_db_range=(self.noise_snr_db_min, self.noise_snr_db_max),
            gain_prob=self.gain_prob,
            max_gain_db=self.max_gain_db,
            speed_prob=self.speed_prob,
            speed_factors=tuple(float(factor) for factor in self.speed_factors.split(",") if factor.strip()),
        )


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="facebook/wav2vec2-base",
        metadata={"help": "Any audio-classification checkpoint: a hub id or a local folder. Its classifier head is replaced for our labels. A Whisper checkpoint (openai/whisper-base, or a folder from python -m scripts.import_whisper) builds WhisperSer: its encoder on the clip's own length, no 30 s padding."},
    )
    from_scratch: str | None = field(
        default=None,
        metadata={"help": "Train a randomly initialised model instead: a preset (emotion-cnn-small, wav2vec2-tiny) or a config.json path. Overrides --model_name_or_path."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "With --from_scratch, or a Whisper checkpoint: override config attributes, e.g. 'ensemble_size=1,dropout=0.2' or 'layers=[2,3,4],head_hidden_size=0' (values parsed as JSON, else kept as strings)."},
    )
    trainable_encoder_layers: int = field(
        default=0,
        metadata={"help": "Whisper checkpoints: fine-tune the top N encoder blocks (0: the encoder is frozen and its embeddings are cached, so each epoch trains only the head; -1: fine-tune all)."},
    )
    freeze_feature_encoder: bool = field(
        default=True,
        metadata={"help": "Freeze the CNN feature encoder (wav2vec2-style models only; others have none)."},
    )
    use_weighted_layer_sum: bool = field(
        default=False,
        metadata={"help": "Classify from a learned weighted sum of all transformer layers (architectures that support it)."},
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit) of --model_name_or_path."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where hub downloads are cached."})


# -- arguments ------------------------------------------------------------------------------------
def build_parser(with_defaults: bool = True):
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser(
        (DataArguments, ModelArguments, TrainingArguments),
        description="Train a speech emotion classifier. Usage: train.py [CONFIG.json] [--flag value ...] (flags override the JSON file).",
    )
    if with_defaults:
        parser.set_defaults(**TRAINING_DEFAULTS)
    return parser


def _explicit_arguments(argv: list[str]) -> dict[str, object]:
    """Only the flags the user typed (argparse-converted), so our defaults never override them."""
    parser = build_parser(with_defaults=False)
    for action in parser._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
            action.required = False
    return vars(parser.parse_args(argv))


def parse_arguments(argv: list[str]):
    """``[CONFIG.json] [flags]`` -> (DataArguments, ModelArguments, TrainingArguments).

    Precedence: command line > JSON file > TRAINING_DEFAULTS > library defaults. Our defaults are
    dropped where they would contradict what the user chose (e.g. no eval split -> no evaluation).
    """
    parser = build_parser()
    if any(arg in ("-h", "--help") for arg in argv):
        parser.parse_args(["--help"])
    file_values: dict[str, object] = {}
    if argv and argv[0].endswith(".json"):
        config_path = Path(argv[0])
        if not config_path.is_file():
            parser.error(f"Config file {config_path} does not exist.")
        try:
            file_values = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            parser.error(f"{config_path} is not valid JSON: {error}")
        argv = argv[1:]
        known = {action.dest for action in parser._actions}
        if unknown := sorted(set(file_values) - known):
            parser.error(f"{config_path}: unknown keys {unknown}; every key must be a train.py flag name.")
    explicit = {**file_values, **_explicit_arguments(argv)}
    values = {**TRAINING_DEFAULTS, **explicit}

    if not values.get("data_dir"):
        parser.error("--data_dir is required (a folder with one sub-folder per emotion class).")
    if not values.get("output_dir"):
        parser.error("--output_dir is required (where the model, metrics.json and split.json are written).")
    has_eval = float(values.get("eval_fraction", DataArguments.eval_fraction)) > 0 or bool(values.get("eval_speakers"))
    if not has_eval:
        if explicit.get("eval_strategy", "no") != "no":
            parser.error("--eval_strategy needs an eval split: set --eval_fraction > 0 or --eval_speakers.")
        if explicit.get("load_best_model_at_end"):
            parser.error("--load_best_model_at_end needs an eval split: set --eval_fraction > 0 or --eval_speakers.")
        values["eval_strategy"] = "no"
    if "load_best_model_at_end" not in explicit and (values["eval_strategy"] == "no" or values["eval_strategy"] != values["save_strategy"]):
        values["load_best_model_at_end"] = False
    if values.get("from_scratch") and "learning_rate" not in explicit:
        values["learning_rate"] = FROM_SCRATCH_LEARNING_RATE
    try:
        data_args, model_args, training_args = parser.parse_dict(values)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    return data_args, model_args, training_args


# -- data -----------------------------------------------------------------------------------------
def ordered_labels(found: list[str]) -> list[str]:
    """Canonical order for known labels, then any --label_map extras alphabetically."""
    return [label for label in CANONICAL_LABELS if label in found] + sorted(set(found) - set(CANONICAL_LABELS))


def load_corpus_split(data_args: DataArguments, seed: int) -> tuple[list[str], Split]:
    try:
        label_map = parse_label_map(data_args.label_map)
    except ValueError as error:
        raise TrainSetupError(f"--label_map: {error}") from error
    excluded = [label.strip() for label in data_args.exclude_labels.split(",") if label.strip()]
    corpus = scan_corpus(data_args.data_dir, label_map=label_map, exclude_labels=excluded)
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
    labels = ordered_labels(corpus.labels)
    if len(labels) < 2:
        raise TrainSetupError(f"Only {labels} left after --exclude_labels {excluded}; a classifier needs at least two classes.")
    logger.info("Found %d clips in %s: %s (excluded: %s)", len(corpus.clips), corpus.root, corpus.label_counts(), corpus.excluded_counts or "none")
    clips = corpus.clips
    if excluded_speakers := parse_speaker_list(data_args.exclude_speakers):
        try:
            clips = drop_speakers(clips, excluded_speakers, flag="--exclude_speakers")
        except SplitError as error:
            raise TrainSetupError(str(error)) from error
        logger.info("--exclude_speakers %s: %d clips left out", data_args.exclude_speakers, len(corpus.clips) - len(clips))
    split = make_split(
        clips,
        strategy=data_args.split,
        eval_fraction=data_args.eval_fraction,
        test_fraction=data_args.test_fraction,
        seed=seed,
        eval_speakers=parse_speaker_list(data_args.eval_speakers),
        test_speakers=parse_speaker_list(data_args.test_speakers),
        allow_random_fallback=data_args.allow_random_fallback,
    )
    return labels, split


def _subset(clips: list[Clip], limit: int | None, seed: int) -> list[Clip]:
    if limit is None or limit >= len(clips):
        return clips
    keep = sorted(np.random.default_rng(seed).choice(len(clips), size=limit, replace=False))
    return [clips[index] for index in keep]


# -- model ----------------------------------------------------------------------------------------
def build_model(model_args: ModelArguments, labels: list[str]):
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification

    from ser.models.presets import apply_config_overrides, config_from_spec, feature_extractor_for

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


# -- frozen-encoder embeddings ----------------------------------------------------------------------
def _embedding_model(model):
    """``model`` when it classifies a cacheable embedding (a frozen WhisperSer encoder), else ``None``."""
    return model if getattr(model, "encoder_is_frozen", False) and hasattr(model, "classify_embedding") else None


def _set_training_statistics(model, feature_extractor, waveforms) -> None:
    """The embedding standardisation from the training clips, before any training step."""
    from ser.embeddings import embed_waveforms
    from ser.statistics import EmbeddingStatistics

    was_training = model.training
    model.eval()
    statistics = EmbeddingStatistics.of(embed_waveforms(model, feature_extractor, waveforms))
    model.train(was_training)
    _load_statistics(model, statistics)


def _load_statistics(model, statistics) -> None:
    import torch

    model.embedding_mean.copy_(torch.from_numpy(statistics.mean).float())
    model.embedding_var.copy_(torch.from_numpy(statistics.variance).float())


def _speaker_statistics(clips: list[Clip], embeddings: np.ndarray) -> list:
    """Each clip's speaker's statistics (over all of that speaker's rows here); clips without a parsed
    speaker share the statistics of all such clips."""
    from ser.statistics import EmbeddingStatistics

    groups: dict[str | None, list[int]] = {}
    for index, clip in enumerate(clips):
        groups.setdefault(clip.speaker and f"{clip.corpus}:{clip.speaker}", []).append(index)
    of_group = {group: EmbeddingStatistics.of(embeddings[indices]) for group, indices in groups.items()}
    return [of_group[clip.speaker and f"{clip.corpus}:{clip.speaker}"] for clip in clips]


def _embedding_datasets(model, feature_extractor, data_args: DataArguments, split: Split, waveform_of: dict, label2id: dict):
    from ser.augment import parse_fixed_copies
    from ser.embeddings import ORIGINAL, EmbeddingCache, cached_embeddings, default_cache_dir
    from ser.statistics import EmbeddingStatistics
    from ser.training import EmbeddingDataset

    if data_args.mixup_alpha > 0:
        raise TrainSetupError("--mixup_alpha mixes waveforms, which a frozen (cached) encoder never sees: drop it or fine-tune with --trainable_encoder_layers.")
    try:
        copies = parse_fixed_copies(data_args.embedding_copies)
    except ValueError as error:
        raise TrainSetupError(f"--embedding_copies: {error}") from error
    if data_args.augment:
        logger.info("Frozen encoder: random waveform augmentation is not applied (each clip is embedded once); fixed copies: %s", copies or "none")
    cache = EmbeddingCache(data_args.embedding_cache_dir or default_cache_dir())
    model.eval()

    def embeddings(clips: list[Clip], copy: str):
        paths = [clip.path for clip in clips]
        return cached_embeddings(model, feature_extractor, paths, [waveform_of[path] for path in paths], copy, cache)

    def labelled(clips: list[Clip]) -> list[int]:
        return [label2id[clip.label] for clip in clips]

    train_clips = split.train * (1 + len(copies))
    train_embeddings = np.concatenate([embeddings(split.train, copy) for copy in [ORIGINAL, *copies]])
    _load_statistics(model, EmbeddingStatistics.of(train_embeddings))
    train = EmbeddingDataset(
        train_embeddings, labelled(train_clips), _speaker_statistics(train_clips, train_embeddings) if data_args.standardize_per_speaker else None
    )

    test_embeddings = embeddings(split.test, ORIGINAL)
    test = EmbeddingDataset(test_embeddings, labelled(split.test))
    # The same clips with each test speaker's own statistics: what adapted prediction would score.
    test_speaker_adapted = EmbeddingDataset(test_embeddings, labelled(split.test), _speaker_statistics(split.test, test_embeddings))
    evaluation = EmbeddingDataset(embeddings(split.eval, ORIGINAL), labelled(split.eval)) if split.eval else None
    model.train()
    return train, evaluation, test, test_speaker_adapted


# -- outputs --------------------------------------------------------------------------------------
def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def run(data_args: DataArguments, model_args: ModelArguments, training_args, command: str) -> dict | None:
    """Scan, split, decode, train, score the test split; returns the test metrics (main process)."""
    import torch
    import transformers
    from transformers.trainer_utils import get_last_checkpoint

    from ser.metrics import classification_metrics
    from ser.training import (
        AudioCollator,
        ClipDataset,
        SerTrainer,
        class_weights,
        collate_embeddings,
        format_model_card,
        load_clips,
        make_compute_metrics,
        sample_weights,
    )

    is_main = training_args.process_index == 0
    output_dir = Path(training_args.output_dir)
    seed = training_args.seed if data_args.split_seed is None else data_args.split_seed

    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "1", "yes"):
        resume = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if resume is None:
            raise TrainSetupError(f"--resume_from_checkpoint true: no checkpoint-* folder in {output_dir}.")
        logger.info("Resuming from %s", resume)
    elif resume is None and output_dir.is_dir() and get_last_checkpoint(str(output_dir)):
        logger.warning("%s already holds checkpoints; training starts afresh (pass --resume_from_checkpoint true to continue).", output_dir)

    labels, split = load_corpus_split(data_args, seed)
    split.train = _subset(split.train, data_args.max_train_samples, seed)
    split.eval = _subset(split.eval, data_args.max_eval_samples, seed)
    split.test = _subset(split.test, data_args.max_eval_samples, seed)
    if not split.test:
        raise TrainSetupError("The test split is empty: set --test_fraction > 0 or --test_speakers.")

    model, feature_extractor = build_model(model_args, labels)
    sample_rate = int(feature_extractor.sampling_rate)
    if model_args.freeze_feature_encoder:
        if hasattr(model, "freeze_feature_encoder"):
            model.freeze_feature_encoder()
            logger.info("Froze the CNN feature encoder of %s.", type(model).__name__)
        else:
            logger.info("%s has no CNN feature encoder; nothing to freeze.", type(model).__name__)

    # Decode every clip once, before training: a bad file is skipped here, never mid-epoch.
    loaded = load_clips(split.train + split.eval + split.test, sample_rate)
    if loaded.failures:
        logger.warning("Skipped %d of %d clips that could not be decoded (listed in split.json).", len(loaded.failures), len(loaded.failures) + len(loaded.clips))
    waveform_of = {clip.path: waveform for clip, waveform in zip(loaded.clips, loaded.waveforms)}
    for name, clips in split.parts().items():
        setattr(split, name, [clip for clip in clips if clip.path in waveform_of])
    for name in ("train", "test"):
        if not getattr(split, name):
            raise TrainSetupError(f"No decodable clips left in the {name} split.")
    logger.info("Split (%s): train %d, eval %d, test %d clips", split.strategy, len(split.train), len(split.eval), len(split.test))

    label2id = label_maps(labels)[1]

    def dataset(clips: list[Clip], train: bool) -> ClipDataset:
        return ClipDataset(
            [waveform_of[clip.path] for clip in clips],
            [label2id[clip.label] for clip in clips],
            sample_rate=sample_rate,
            max_duration_s=data_args.max_duration_s if train else data_args.eval_max_duration_s,
            train=train,
            augment=data_args.augment_config() if train else None,
        )

    embedding_model = _embedding_model(model)
    if embedding_model is not None:
        # A frozen encoder: embed every clip once (cached on disk), train only the head.
        train_dataset, eval_dataset, test_dataset, adapted_test_dataset = _embedding_datasets(
            embedding_model, feature_extractor, data_args, split, waveform_of, label2id
        )
        data_collator = collate_embeddings
    else:
        train_dataset, test_dataset = dataset(split.train, True), dataset(split.test, False)
        eval_dataset = dataset(split.eval, False) if split.eval else None
        adapted_test_dataset = None
        data_collator = AudioCollator(feature_extractor)
        if hasattr(model, "embedding_mean"):
            _set_training_statistics(model, feature_extractor, [waveform_of[clip.path] for clip in split.train])
    if eval_dataset is None and training_args.eval_strategy != "no":
        raise TrainSetupError("The eval split is empty but --eval_strategy is not 'no'.")

    split_summary = split.summary() | {"skipped_clips": [{"path": path, "reason": reason} for path, reason in loaded.failures]}
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(output_dir / "split.json", split_summary)
        _write_json(
            output_dir / "train_config.json",
            {
                "command": command,
                "labels": labels,
                "world_size": training_args.world_size,
                "data": asdict(data_args),
                "model": asdict(model_args),
                "training": training_args.to_dict(),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            },
        )

    train_label_ids = train_dataset.label_ids
    missing = [label for label in labels if label2id[label] not in set(train_label_ids)]
    if missing:
        logger.warning("No training clips for %s: the model cannot learn these classes.", missing)
    trainer = SerTrainer(
        model=model,
        args=training_args,
        data_collator=data_collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=feature_extractor,
        compute_metrics=make_compute_metrics(labels),
        class_weights=class_weights(train_label_ids, len(labels)) if data_args.class_balance == "weighted_loss" else None,
        sample_weights=sample_weights(train_label_ids) if data_args.class_balance == "sampler" else None,
        mixup_alpha=data_args.mixup_alpha,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    prediction = trainer.predict(test_dataset, metric_key_prefix="test")
    trainer.log_metrics("test", prediction.metrics)
    if not trainer.is_world_process_zero():
        return None
    def test_metrics(prediction, **extra) -> dict:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        y_pred = [labels[index] for index in np.argmax(logits, axis=-1)]
        y_true = [labels[index] for index in prediction.label_ids]
        return classification_metrics(y_true, y_pred, labels) | {
            "split": "test",
            "speakers": split_summary["test"]["speakers"],
            "model": model_args.from_scratch and f"from_scratch:{model_args.from_scratch}" or model_args.model_name_or_path,
            **extra,
        }

    metrics = test_metrics(prediction)
    _write_json(output_dir / "metrics.json", metrics)
    if adapted_test_dataset is not None:
        adapted = test_metrics(trainer.predict(adapted_test_dataset, metric_key_prefix="test_speaker_adapted"), adapt="speaker")
        _write_json(output_dir / SPEAKER_ADAPTED_METRICS, adapted)
        logger.info("Test split, each speaker's own statistics: accuracy %.3f -> %s", adapted["accuracy"], output_dir / SPEAKER_ADAPTED_METRICS)
    trainer.model_card = format_model_card(
        metrics["model"], labels, metrics, split_summary, str(data_args.data_dir), command
    )
    (output_dir / "README.md").write_text(trainer.model_card)
    logger.info("Test split: accuracy %.3f, macro-F1 %.3f, UAR %.3f (%d clips) -> %s", metrics["accuracy"], metrics["macro_f1"], metrics["uar"], metrics["n"], output_dir / "metrics.json")
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="train.py: model, metrics.json, split.json")
    return metrics


def _setup_logging(training_args) -> None:
    import transformers

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    level = logging.INFO if training_args.process_index == 0 else logging.WARNING
    for name in ("train", "ser"):
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    data_args, model_args, training_args = parse_arguments(argv)
    _setup_logging(training_args)
    command = "python train.py " + shlex.join(argv)
    try:
        run(data_args, model_args, training_args, command)
    except (CorpusError, SplitError, AudioError, TrainSetupError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
