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


def speaker_statistics(clips: list[Clip], embeddings: np.ndarray) -> list:
    """Each clip's speaker's statistics (over all of that speaker's rows here); clips without a parsed
    speaker share the statistics of all such clips."""
    from ser.core.statistics import EmbeddingStatistics

    groups: dict[str | None, list[int]] = {}
    for index, clip in enumerate(clips):
        groups.setdefault(clip.speaker and f"{clip.corpus}:{clip.speaker}", []).append(index)
    of_group = {group: EmbeddingStatistics.of(embeddings[indices]) for group, indices in groups.items()}
    return [of_group[clip.speaker and f"{clip.corpus}:{clip.speaker}"] for clip in clips]


def embedding_datasets(model, feature_extractor, data_args: DataArguments, split: Split, waveform_of: dict, label2id: dict):
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

    train_clips = split.train * (1 + len(copies))
    train_embeddings = np.concatenate([embeddings(split.train, copy) for copy in [ORIGINAL, *copies]])
    load_statistics(model, EmbeddingStatistics.of(train_embeddings))
    train = EmbeddingDataset(
        train_embeddings, labelled(train_clips), speaker_statistics(train_clips, train_embeddings) if data_args.standardize_per_speaker else None
    )

    test_embeddings = embeddings(split.test, ORIGINAL)
    test = EmbeddingDataset(test_embeddings, labelled(split.test))
    # The same clips with each test speaker's own statistics: what adapted prediction would score.
    test_speaker_adapted = EmbeddingDataset(test_embeddings, labelled(split.test), speaker_statistics(split.test, test_embeddings))
    evaluation = EmbeddingDataset(embeddings(split.eval, ORIGINAL), labelled(split.eval)) if split.eval else None
    model.train()
    return train, evaluation, test, test_speaker_adapted


