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


def cross_corpus_mixup(
    embeddings: np.ndarray, label_ids: list[int], corpora: list, copies: int, min_weight: float, rng: np.random.Generator
) -> tuple[list[int], np.ndarray]:
    """Mixup across corpora within a class: for each clip, ``copies`` times, ``w * clip + (1 - w) * partner``
    with a random partner of the same class from another corpus and ``w ~ U(min_weight, 1)``; the clip's
    label, weight and mask stay (the partner has the same class). What is shared by a class across corpora
    is kept, what tells one corpus from another is blurred. Returns each mixed row's source clip and the rows."""
    if copies < 0 or not 0.0 <= min_weight <= 1.0:
        raise TrainSetupError(f"--corpus_mixup_copies must be >= 0 and --corpus_mixup_min_weight in [0, 1], got {copies} and {min_weight}.")
    label_ids, corpora = np.asarray(label_ids), np.asarray([str(corpus) for corpus in corpora])
    sources, rows = [], []
    for index in range(len(label_ids)):
        partners = np.flatnonzero((label_ids == label_ids[index]) & (corpora != corpora[index]))
        if len(partners) == 0:
            continue
        for partner in rng.choice(partners, size=copies):
            weight = rng.uniform(min_weight, 1.0)
            sources.append(index)
            rows.append(weight * embeddings[index] + (1.0 - weight) * embeddings[partner])
    return sources, (np.stack(rows).astype(np.float32) if rows else np.zeros((0, *embeddings.shape[1:]), np.float32))


def embedding_datasets(
    model, feature_extractor, data_args: DataArguments, split: Split, waveform_of: dict, label2id: dict, training_extras=None, embed=None
) -> dict:
    """The datasets a frozen encoder's head trains and is scored on: ``train``, ``train_speaker_standardised``
    (each training clip standardised with its speaker's statistics, for the adapted head; ``None`` without
    one), ``eval`` (or ``None``),
    ``test`` (the training statistics), ``test_speaker_adapted`` and ``test_corpus_adapted`` (each test
    clip standardised with its speaker's / corpus's own statistics). ``training_extras(clips)`` gives the
    training clips' per-clip loss weights and allowed classes (keyword arguments of EmbeddingDataset).
    ``embed(clips, copy)`` replaces the disk cache (partial fine-tuning's embeddings from cached states)."""
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
        if embed is not None:
            return embed(clips, copy)
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
    # Group statistics come from the clips and copies as they are, before any cross-corpus mix is added.
    own_speaker = speaker_statistics(train_clips, train_embeddings)
    statistics = None
    if data_args.standardize_per_speaker:
        statistics = own_speaker
    elif data_args.standardize_per_corpus:
        statistics = corpus_statistics(train_clips, train_embeddings)
    # The adapted head's training set: every clip standardised with its own speaker's statistics. A mixed
    # embedding has no one speaker, so mixup only ever reaches the single-clip head.
    speaker_standardised = (
        EmbeddingDataset(train_embeddings, labelled(train_clips), own_speaker, **(training_extras(train_clips) if training_extras else {}))
        if getattr(model.config, "adapted_head", False)
        else None
    )
    if data_args.corpus_mixup_copies:
        sources, mixed = cross_corpus_mixup(
            train_embeddings, labelled(train_clips), [clip.corpus for clip in train_clips], data_args.corpus_mixup_copies,
            data_args.corpus_mixup_min_weight, np.random.default_rng(data_args.split_seed or 0),
        )  # fmt: skip
        logger.info("Cross-corpus mixup: %d mixed embeddings (%d per clip with a partner)", len(sources), data_args.corpus_mixup_copies)
        train_clips = train_clips + [train_clips[source] for source in sources]
        train_embeddings = np.concatenate([train_embeddings, mixed])
        if statistics is not None:
            statistics = statistics + [statistics[source] for source in sources]
    extras = training_extras(train_clips) if training_extras else {}
    train = EmbeddingDataset(train_embeddings, labelled(train_clips), statistics, **extras)

    test_embeddings = embeddings(split.test, ORIGINAL)
    datasets = {
        "train": train,
        "train_speaker_standardised": speaker_standardised,
        "eval": EmbeddingDataset(embeddings(split.eval, ORIGINAL), labelled(split.eval)) if split.eval else None,
        "test": EmbeddingDataset(test_embeddings, labelled(split.test)),
        # The same clips with each test speaker's (corpus's) own statistics: what adapted prediction would score.
        "test_speaker_adapted": EmbeddingDataset(test_embeddings, labelled(split.test), speaker_statistics(split.test, test_embeddings)),
        "test_corpus_adapted": EmbeddingDataset(test_embeddings, labelled(split.test), corpus_statistics(split.test, test_embeddings)),
    }
    model.train()
    return datasets


