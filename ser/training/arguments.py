"""train.py's arguments: the data and model dataclasses next to transformers' TrainingArguments,
parsed from the command line, a JSON file, or both (command-line values win), with our defaults."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ser import models as _register_models  # noqa: F401  (registers EmotionCnn with the Auto classes)
from ser.audio.augment import AugmentConfig
from ser.core.labels import (
    DEFAULT_EXCLUDED_LABELS,
)

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
#: A randomly initialised model wants a much larger step than fine-tuning does.
FROM_SCRATCH_LEARNING_RATE = 1e-3


class TrainSetupError(RuntimeError):
    """Something about the inputs that stops training before it starts; the message says what to do."""


@dataclass
class DataArguments:
    data_dir: list[str] | None = field(
        default=None,
        metadata={"help": "Corpus with one folder per class: Audio Emotions (Emotions/Angry, ...; the folder itself or its parent) or AESDD (anger, ...). Required. Several folders (--data_dir a b c, or a JSON list) train on several corpora at once; every clip keeps its corpus and speaker (docs/training.md)."},
    )
    speaker_from: Literal["name", "parent"] = field(
        default="name",
        metadata={"help": "Where a clip's speaker comes from: 'name' parses the file name (RAVDESS, CREMA-D, TESS, SAVEE, AESDD, EMOVO, EMO-DB, nEMO); 'parent' takes the folder holding the clip inside its class folder (class/speaker/clip.wav), for a corpus no pattern knows."},
    )
    test_corpora: str | None = field(
        default=None,
        metadata={"help": "Comma-separated corpora (data folder names, or names parsed from file names: ravdess, emodb, nemo, ...) whose clips all form the test split: a held-out corpus (scripts/cross_validate.py --folds loco)."},
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
    class_balance: Literal["none", "weighted_loss", "sampler", "corpus_class"] = field(
        default="weighted_loss",
        metadata={"help": "Counter class imbalance: class-weighted cross-entropy, a class-balanced sampler, nothing, or 'corpus_class': per-clip loss weights n / (corpora * classes in the clip's corpus * clips in its (corpus, class) cell), so every corpus weighs the same and every class within it (several --data_dir)."},
    )
    mask_absent_classes: bool = field(
        default=False,
        metadata={"help": "A clip's loss only sees the classes its corpus has (the others' logits are masked out), so a corpus without a class (nEMO: no disgust) never teaches that the class is unlikely."},
    )
    augment: bool = field(default=True, metadata={"help": "Waveform augmentation of the training split with audiomentations (coloured noise, gain, speed, pitch; see below)."})
    noise_prob: float = field(default=0.3, metadata={"help": "Probability of adding coloured noise to a training clip."})
    noise_snr_db_min: float = field(default=15.0, metadata={"help": "Lowest SNR (dB) of the added noise."})
    noise_snr_db_max: float = field(default=35.0, metadata={"help": "Highest SNR (dB) of the added noise."})
    gain_prob: float = field(default=0.5, metadata={"help": "Probability of a random gain."})
    max_gain_db: float = field(default=6.0, metadata={"help": "Random gain is drawn from [-max_gain_db, +max_gain_db]."})
    speed_prob: float = field(default=0.0, metadata={"help": "Probability of speed perturbation (changes pitch too, so off by default)."})
    speed_factors: str = field(default="0.9,1.1", metadata={"help": "Comma-separated speed factors to draw from."})
    pitch_prob: float = field(default=0.0, metadata={"help": "Probability of a pitch shift (tempo kept)."})
    max_pitch_semitones: float = field(default=2.0, metadata={"help": "The pitch shift is drawn from [-max_pitch_semitones, +max_pitch_semitones]."})
    mixup_alpha: float = field(
        default=0.0,
        metadata={"help": "Mixup: train on mixtures of two clips' waveforms and labels, weight ~ Beta(alpha, alpha); 0 disables."},
    )
    embedding_copies: str = field(
        default="",
        metadata={"help": "Frozen Whisper encoders only: fixed augmented copies of every training clip, embedded once and cached beside the original, e.g. 'pitch=-2,pitch=2,color_noise_snr_db=15,opus_kbps=16' (kinds: speed, tempo, pitch, gain_db, noise_snr_db, color_noise_snr_db, opus_kbps; ser/audio/augment.py). The random waveform augmentation above needs an encoder pass per epoch and is not used there)."},
    )
    embedding_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where frozen-encoder embeddings are cached (default: $SER_CACHE_DIR/embeddings, else ~/.cache/ser/embeddings)."},
    )
    corpus_mixup_copies: int = field(
        default=0,
        metadata={"help": "Frozen Whisper encoders: add this many mixed embeddings per training clip, each mixed with a random clip of the same class from another corpus (weight ~ U(--corpus_mixup_min_weight, 1) on the clip's side; its label, weight and mask kept). Only the single-clip head sees them (a mixed embedding has no one speaker for the adapted head). 0 disables."},
    )
    corpus_mixup_min_weight: float = field(default=0.5, metadata={"help": "The smallest weight of the clip's own side in --corpus_mixup_copies."})
    cache_frozen_states: bool = field(
        default=False,
        metadata={"help": "WhisperSer with --trainable_encoder_layers N: compute the hidden state below the N trained blocks once per clip (and fixed copy), keep it in memory as float16, and train only those blocks and the head on it; then freeze them and refit the linear heads (--head_solver lbfgs). Without it, every step runs the whole encoder on the waveform."},
    )
    standardize_per_speaker: bool = field(
        default=False,
        metadata={"help": "Frozen Whisper encoders only: train the head on embeddings standardised with each training speaker's own statistics (as adapted prediction uses a speaker's or corpus's), instead of the training set's. The model still stores the training set's statistics for single clips."},
    )
    standardize_per_corpus: bool = field(
        default=False,
        metadata={"help": "Frozen Whisper encoders only: train the head on embeddings standardised with each training corpus's own statistics (as --adapt corpus does at test time). The model still stores the pooled training statistics for single clips."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training clips (a seeded random subset; for quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval and test clips each."})

    def data_dirs(self) -> list[str]:
        """``data_dir`` as a list (one folder, or several)."""
        if self.data_dir is None:
            return []
        return [self.data_dir] if isinstance(self.data_dir, str) else [str(path) for path in self.data_dir]

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
            pitch_prob=self.pitch_prob,
            max_pitch_semitones=self.max_pitch_semitones,
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
    head_solver: Literal["trainer", "lbfgs"] = field(
        default="trainer",
        metadata={"help": "'trainer': the head trains with the Trainer (optimizer, epochs). 'lbfgs': a frozen encoder's linear head (head_hidden_size=0, ensemble_size=1) is fitted full-batch by L-BFGS on the cached embeddings, minimising l2_C * sum of weighted cross-entropies + |W|^2 / 2 (scikit-learn's convention)."},
    )
    head_learning_rate: float = field(
        default=1e-4, metadata={"help": "With --cache_frozen_states: the head's learning rate (the trained blocks use --learning_rate)."}
    )
    corpus_adversarial_weight: float = field(
        default=0.0,
        metadata={"help": "With --cache_frozen_states and several training corpora: a linear corpus classifier on the embedding behind a gradient reversal of this weight, so the trained blocks learn to hide the corpus; 0 disables."},
    )
    l2_C: float = field(default=0.002, metadata={"help": "With --head_solver lbfgs: the inverse L2 strength C (smaller = stronger regularisation)."})
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
    # One folder stays a string (the single-corpus recipe and its train_config.json are unchanged).
    folders = data_args.data_dirs()
    data_args.data_dir = folders[0] if len(folders) == 1 else folders
    return data_args, model_args, training_args


