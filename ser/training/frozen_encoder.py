"""Training on a frozen encoder: each clip (and each fixed augmented copy) is embedded once and cached,
the head trains on the embeddings, and the standardisation statistics come from the training clips."""

from __future__ import annotations

import logging

import numpy as np

from ser import models as _register_models  # noqa: F401  (registers EmotionCnn with the Auto classes)
from ser.data.corpus import Clip
from ser.data.splits import (
    Split,
)
from ser.training.arguments import DataArguments, TrainSetupError

logger = logging.getLogger("train")

# -- frozen-encoder embeddings ----------------------------------------------------------------------
def frozen_embedding_model(model):
    """``model`` when it classifies a cacheable embedding (a frozen WhisperSer encoder), else ``None``."""
    return model if getattr(model, "encoder_is_frozen", False) and hasattr(model, "classify_embedding") else None


def set_training_statistics(model, feature_extractor, waveforms) -> None:
    """The embedding standardisation from the training clips, before any training step."""
    from ser.core.statistics import EmbeddingStatistics
    from ser.inference.embeddings import embed_waveforms

    was_training = model.training
    model.eval()
    statistics = EmbeddingStatistics.of(embed_waveforms(model, feature_extractor, waveforms))
    model.train(was_training)
    load_statistics(model, statistics)


def load_statistics(model, statistics) -> None:
    import torch

    model.embedding_mean.copy_(torch.from_numpy(statistics.mean).float())
    model.embedding_var.copy_(torch.from_numpy(statistics.variance).float())


def group_statistics(groups: list, embeddings: np.ndarray) -> list:
    """Each row's group's statistics (over all of that group's rows here)."""
    from ser.core.statistics import EmbeddingStatistics

    rows: dict = {}
    for index, group in enumerate(groups):
        rows.setdefault(group, []).append(index)
    of_group = {group: EmbeddingStatistics.of(embeddings[indices]) for group, indices in rows.items()}
    return [of_group[group] for group in groups]


def speaker_statistics(clips: list[Clip], embeddings: np.ndarray) -> list:
    """Each clip's speaker's statistics (over all of that speaker's rows here); clips without a parsed
    speaker share the statistics of all such clips."""
    return group_statistics([clip.speaker and f"{clip.corpus}:{clip.speaker}" for clip in clips], embeddings)


def corpus_statistics(clips: list[Clip], embeddings: np.ndarray) -> list:
    """Each clip's corpus's statistics (over all of that corpus's rows here), as ``--adapt corpus`` uses."""
    return group_statistics([clip.corpus for clip in clips], embeddings)


def embedding_datasets(
    model, feature_extractor, data_args: DataArguments, split: Split, waveform_of: dict, label2id: dict, training_extras=None
) -> dict:
    """The datasets a frozen encoder's head trains and is scored on: ``train``, ``eval`` (or ``None``),
    ``test`` (the training statistics), ``test_speaker_adapted`` and ``test_corpus_adapted`` (each test
    clip standardised with its speaker's / corpus's own statistics). ``training_extras(clips)`` gives the
    training clips' per-clip loss weights and allowed classes (keyword arguments of EmbeddingDataset)."""
    from ser.audio.augment import parse_fixed_copies
    from ser.core.statistics import EmbeddingStatistics
    from ser.inference.embeddings import (
        ORIGINAL,
        EmbeddingCache,
        cached_embeddings,
        default_cache_dir,
    )
    from ser.training.datasets import EmbeddingDataset

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

    if data_args.standardize_per_speaker and data_args.standardize_per_corpus:
        raise TrainSetupError("--standardize_per_speaker and --standardize_per_corpus exclude each other: choose one.")
    train_clips = split.train * (1 + len(copies))
    train_embeddings = np.concatenate([embeddings(split.train, copy) for copy in [ORIGINAL, *copies]])
    # The pooled statistics are stored for single clips, whichever way the head trains.
    load_statistics(model, EmbeddingStatistics.of(train_embeddings))
    statistics = None
    if data_args.standardize_per_speaker:
        statistics = speaker_statistics(train_clips, train_embeddings)
    elif data_args.standardize_per_corpus:
        statistics = corpus_statistics(train_clips, train_embeddings)
    train = EmbeddingDataset(train_embeddings, labelled(train_clips), statistics, **(training_extras(train_clips) if training_extras else {}))

    test_embeddings = embeddings(split.test, ORIGINAL)
    datasets = {
        "train": train,
        "eval": EmbeddingDataset(embeddings(split.eval, ORIGINAL), labelled(split.eval)) if split.eval else None,
        "test": EmbeddingDataset(test_embeddings, labelled(split.test)),
        # The same clips with each test speaker's (corpus's) own statistics: what adapted prediction would score.
        "test_speaker_adapted": EmbeddingDataset(test_embeddings, labelled(split.test), speaker_statistics(split.test, test_embeddings)),
        "test_corpus_adapted": EmbeddingDataset(test_embeddings, labelled(split.test), corpus_statistics(split.test, test_embeddings)),
    }
    model.train()
    return datasets


