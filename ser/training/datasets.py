"""In-memory training data: clips decoded once, waveform datasets with crops and augmentation, their
collator, and the embedding datasets a frozen encoder trains on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from ser.audio.augment import AugmentConfig, augment_waveform
from ser.audio.loader import AudioError, load_audio
from ser.data.corpus import Clip

logger = logging.getLogger(__name__)


@dataclass
class LoadedClips:
    clips: list[Clip]
    waveforms: list[np.ndarray]
    #: (path, reason) for every clip that could not be decoded.
    failures: list[tuple[str, str]] = field(default_factory=list)


def load_clips(clips: Sequence[Clip], sample_rate: int) -> LoadedClips:
    """Decode every clip once into memory; unreadable ones are skipped and reported, never fatal."""
    loaded = LoadedClips(clips=[], waveforms=[])
    for clip in clips:
        try:
            waveform = load_audio(clip.path, sample_rate)
        except AudioError as error:
            logger.warning("Skipping %s: %s", clip.path, error)
            loaded.failures.append((clip.path, str(error)))
            continue
        loaded.clips.append(clip)
        loaded.waveforms.append(waveform)
    return loaded


def random_crop(waveform: np.ndarray, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    if max_samples <= 0 or len(waveform) <= max_samples:
        return waveform
    start = int(rng.integers(0, len(waveform) - max_samples + 1))
    return waveform[start : start + max_samples]


def center_crop(waveform: np.ndarray, max_samples: int) -> np.ndarray:
    if max_samples <= 0 or len(waveform) <= max_samples:
        return waveform
    start = (len(waveform) - max_samples) // 2
    return waveform[start : start + max_samples]


class ClipDataset(Dataset):
    """Decoded waveforms + label ids. Training: random crop and augmentation; otherwise centre crop."""

    def __init__(
        self,
        waveforms: Sequence[np.ndarray],
        label_ids: Sequence[int],
        sample_rate: int,
        max_duration_s: float | None,
        train: bool,
        augment: AugmentConfig | None = None,
        loss_weights: Sequence[float] | None = None,
        allowed_classes: np.ndarray | None = None,
    ):
        if len(waveforms) != len(label_ids):
            raise ValueError(f"{len(waveforms)} waveforms but {len(label_ids)} labels.")
        self.extras = per_clip_extras(len(label_ids), loss_weights, allowed_classes)
        self.waveforms = list(waveforms)
        self.label_ids = [int(label_id) for label_id in label_ids]
        self.sample_rate = sample_rate
        self.max_samples = int(round(max_duration_s * sample_rate)) if max_duration_s else 0
        self.train = train
        self.augment = augment if (train and augment is not None and augment.enabled) else None

    def __len__(self) -> int:
        return len(self.waveforms)

    def __getitem__(self, index: int) -> dict:
        waveform = self.waveforms[index]
        if self.train:
            # Drawn from torch's RNG so Trainer's seed (and per-worker seeding) governs it.
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
            if self.augment is not None:
                waveform = augment_waveform(waveform, rng, self.augment, self.sample_rate)
            waveform = random_crop(waveform, self.max_samples, rng)
        else:
            waveform = center_crop(waveform, self.max_samples)
        return {"input_values": waveform, "labels": self.label_ids[index]} | {key: values[index] for key, values in self.extras.items()}


class AudioCollator:
    """Pads a batch with the model's own feature extractor (the same call the predictor makes)."""

    def __init__(self, feature_extractor):
        self.feature_extractor = feature_extractor
        self.return_attention_mask = bool(getattr(feature_extractor, "return_attention_mask", False))

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.feature_extractor(
            [feature["input_values"] for feature in features],
            sampling_rate=self.feature_extractor.sampling_rate,
            padding=True,
            return_attention_mask=self.return_attention_mask,
            return_tensors="pt",
        )
        batch = dict(batch)
        batch["labels"] = torch.tensor([feature["labels"] for feature in features], dtype=torch.long)
        for key in PER_CLIP_EXTRAS:
            if key in features[0]:
                batch[key] = torch.stack([feature[key] for feature in features])
        return batch


#: Optional per-clip training inputs the loss reads (ser.training.trainer.SerTrainer.compute_loss).
PER_CLIP_EXTRAS: tuple[str, ...] = ("loss_weight", "allowed_classes")


def per_clip_extras(count: int, loss_weights: Sequence[float] | None, allowed_classes: np.ndarray | None) -> dict[str, torch.Tensor]:
    """Per-clip loss weights and allowed-class masks as tensors, checked against the clip count."""
    extras: dict[str, torch.Tensor] = {}
    if loss_weights is not None:
        extras["loss_weight"] = torch.as_tensor(np.asarray(loss_weights, dtype=np.float32))
    if allowed_classes is not None:
        extras["allowed_classes"] = torch.as_tensor(np.asarray(allowed_classes, dtype=bool))
    for key, values in extras.items():
        if len(values) != count:
            raise ValueError(f"{count} clips but {len(values)} {key} rows.")
    return extras



class EmbeddingDataset(Dataset):
    """Precomputed utterance embeddings (a frozen encoder's, see ``ser.inference.embeddings``) + label ids, and
    optionally per-clip standardisation statistics (e.g. each clip's speaker's)."""

    def __init__(
        self,
        embeddings: np.ndarray,
        label_ids: Sequence[int],
        statistics: Sequence | None = None,
        loss_weights: Sequence[float] | None = None,
        allowed_classes: np.ndarray | None = None,
    ):
        if len(embeddings) != len(label_ids) or (statistics is not None and len(statistics) != len(label_ids)):
            raise ValueError(f"{len(embeddings)} embeddings, {len(label_ids)} labels and {len(statistics or [])} statistics.")
        self.extras = per_clip_extras(len(label_ids), loss_weights, allowed_classes)
        self.embeddings = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.label_ids = [int(label_id) for label_id in label_ids]
        self.statistics = list(statistics) if statistics is not None else None

    def __len__(self) -> int:
        return len(self.label_ids)

    def __getitem__(self, index: int) -> dict:
        item = {"embedding": self.embeddings[index], "labels": self.label_ids[index]}
        if self.statistics is not None:
            item["statistics_mean"] = torch.from_numpy(self.statistics[index].mean).float()
            item["statistics_var"] = torch.from_numpy(self.statistics[index].variance).float()
        return item | {key: values[index] for key, values in self.extras.items()}


def collate_embeddings(features: list[dict]) -> dict[str, torch.Tensor]:
    batch = {key: torch.stack([feature[key] for feature in features]) for key in features[0] if key != "labels"}
    batch["labels"] = torch.tensor([feature["labels"] for feature in features], dtype=torch.long)
    return batch
