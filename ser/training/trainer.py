"""The pieces train.py puts together: in-memory clip datasets, the collator, metrics, and a
Trainer that knows class-weighted loss, a class-balanced sampler and mixup."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler
from transformers import EvalPrediction, Trainer

from .audio import AudioError, load_audio
from .augment import AugmentConfig, augment_waveform
from .corpus import Clip
from .metrics import classification_metrics
from .models.emotion_cnn import member_cross_entropy

logger = logging.getLogger(__name__)

CLASS_BALANCE_MODES: tuple[str, ...] = ("none", "weighted_loss", "sampler")


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
    ):
        if len(waveforms) != len(label_ids):
            raise ValueError(f"{len(waveforms)} waveforms but {len(label_ids)} labels.")
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
        return {"input_values": waveform, "labels": self.label_ids[index]}


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
        return batch


def class_weights(label_ids: Sequence[int], num_labels: int) -> torch.Tensor:
    """``n / (k * count)`` per class (scikit-learn's "balanced"); a class absent from training gets 0."""
    counts = Counter(label_ids)
    total = len(label_ids)
    present = sum(1 for index in range(num_labels) if counts[index])
    return torch.tensor(
        [total / (present * counts[index]) if counts[index] else 0.0 for index in range(num_labels)], dtype=torch.float32
    )


def sample_weights(label_ids: Sequence[int]) -> list[float]:
    """``1 / count(label)`` per clip: each class is drawn equally often by a weighted sampler."""
    counts = Counter(label_ids)
    return [1.0 / counts[label_id] for label_id in label_ids]


def mix_batch(inputs: dict[str, torch.Tensor], alpha: float) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """Mixup on waveforms: each clip becomes ``w * clip + (1 - w) * partner`` with ``w ~ Beta(alpha, alpha)``
    (one ``w`` per batch, folded to >= 0.5 so the clip's own label dominates) and a random partner from
    the batch. Returns the mixed inputs, the partner indices and ``w``; the loss mixes the same way.
    """
    waveforms = inputs["input_values"]
    mix_weight = float(torch.distributions.Beta(alpha, alpha).sample())
    mix_weight = max(mix_weight, 1.0 - mix_weight)
    partner = torch.randperm(waveforms.shape[0], device=waveforms.device)
    mixed = dict(inputs)
    mixed["input_values"] = mix_weight * waveforms + (1.0 - mix_weight) * waveforms[partner]
    if "attention_mask" in inputs:
        # The mixed clip lasts as long as the longer of the two.
        mixed["attention_mask"] = torch.maximum(inputs["attention_mask"], inputs["attention_mask"][partner])
    return mixed, partner, mix_weight


def make_compute_metrics(labels: Sequence[str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """Trainer ``compute_metrics``: accuracy, macro-F1 and UAR from ser.metrics."""
    labels = list(labels)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        y_pred = [labels[index] for index in np.argmax(logits, axis=-1)]
        y_true = [labels[index] for index in np.asarray(prediction.label_ids).reshape(-1)]
        metrics = classification_metrics(y_true, y_pred, labels)
        return {name: metrics[name] for name in ("accuracy", "macro_f1", "uar")}

    return compute_metrics


class SerTrainer(Trainer):
    """Trainer plus class-weighted cross-entropy, a class-balanced sampler, mixup, and our model card.

    ``--label_smoothing_factor`` applies to every loss here, per ensemble member.
    """

    # Our weighted loss is a per-batch mean, so Trainer still divides it for gradient accumulation.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        class_weights: torch.Tensor | None = None,
        sample_weights: Sequence[float] | None = None,
        mixup_alpha: float = 0.0,
        model_card: str | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {mixup_alpha}")
        self.class_weights = class_weights
        self.sample_weights = list(sample_weights) if sample_weights is not None else None
        self.mixup_alpha = mixup_alpha
        self.model_card = model_card

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mixing = self.mixup_alpha > 0 and model.training
        # Trainer's own path would smooth an ensemble's averaged logits and knows no class weights.
        own_loss = self.class_weights is not None or mixing or self.args.label_smoothing_factor > 0
        if "labels" not in inputs or not own_loss:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        if mixing:
            inputs, partner, mix_weight = mix_batch(inputs, self.mixup_alpha)
        outputs = model(**inputs)
        loss = self._classification_loss(outputs, labels)
        if mixing:
            loss = mix_weight * loss + (1 - mix_weight) * self._classification_loss(outputs, labels[partner])
        return (loss, outputs) if return_outputs else loss

    def _classification_loss(self, outputs, labels: torch.Tensor) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        smoothing = self.args.label_smoothing_factor
        member_logits = outputs.get("member_logits") if isinstance(outputs, dict) else None
        if member_logits is not None:
            # An ensemble in one model (EmotionCnn's ensemble_size): every member gets its own loss.
            return member_cross_entropy(member_logits, labels, weight=weight, label_smoothing=smoothing)
        return torch.nn.functional.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=smoothing)

    def _get_train_sampler(self, train_dataset=None):
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        # Same seed on every rank: accelerate shards the batches of one shared sequence across processes.
        generator = torch.Generator().manual_seed(self.args.seed)
        return WeightedRandomSampler(self.sample_weights, num_samples=len(self.sample_weights), replacement=True, generator=generator)

    def create_model_card(self, *args, **kwargs) -> None:
        """``push_to_hub`` writes a model card; keep the run's own card (metrics from metrics.json) instead."""
        if self.model_card is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            from pathlib import Path

            Path(self.args.output_dir, "README.md").write_text(self.model_card)
        return None


def format_model_card(
    model_name: str,
    labels: Sequence[str],
    metrics: dict,
    split_summary: dict,
    data_dir: str,
    command: str,
) -> str:
    """A short README.md for the output folder; every number comes from ``metrics`` / ``split_summary``."""
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: audio-classification",
        "tags: [speech-emotion-recognition, audio-classification]",
        "---",
        "",
        f"# Speech emotion recognition: {model_name}",
        "",
        f"Trained by `train.py` on `{data_dir}` with a {split_summary['strategy']} split. "
        f"Labels: {', '.join(labels)}.",
        "",
        f"## Held-out test split ({metrics['n']} clips)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | {metrics['accuracy']:.3f} |",
        f"| macro-F1 | {metrics['macro_f1']:.3f} |",
        f"| UAR | {metrics['uar']:.3f} |",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        row = metrics["per_class"][label]
        lines.append(f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    lines += ["", "## Split", "", "| split | clips | speakers |", "|---|---|---|"]
    for name in ("train", "eval", "test"):
        part = split_summary[name]
        speakers = ", ".join(part["speakers"][:12]) if part["speakers"] else "(clip-level)"
        if len(part["speakers"]) > 12:
            speakers += f", ... ({len(part['speakers'])} in all)"
        lines.append(f"| {name} | {part['num_clips']} | {speakers} |")
    lines += ["", "## Reproduce", "", "```bash", command, "```", ""]
    return "\n".join(lines)


class EmbeddingDataset(Dataset):
    """Precomputed utterance embeddings (a frozen encoder's, see ``ser.embeddings``) + label ids, and
    optionally per-clip standardisation statistics (e.g. each clip's speaker's)."""

    def __init__(self, embeddings: np.ndarray, label_ids: Sequence[int], statistics: Sequence | None = None):
        if len(embeddings) != len(label_ids) or (statistics is not None and len(statistics) != len(label_ids)):
            raise ValueError(f"{len(embeddings)} embeddings, {len(label_ids)} labels and {len(statistics or [])} statistics.")
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
        return item


def collate_embeddings(features: list[dict]) -> dict[str, torch.Tensor]:
    batch = {key: torch.stack([feature[key] for feature in features]) for key in features[0] if key != "labels"}
    batch["labels"] = torch.tensor([feature["labels"] for feature in features], dtype=torch.long)
    return batch
