"""The Trainer train.py uses: class-weighted loss, a class-balanced sampler, mixup, and the metrics
it reports."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler
from transformers import EvalPrediction, Trainer

from ser.core.metrics import classification_metrics
from ser.models.emotion_cnn import member_cross_entropy

logger = logging.getLogger(__name__)

CLASS_BALANCE_MODES: tuple[str, ...] = ("none", "weighted_loss", "sampler", "corpus_class")
#: Added to the logit of a class a clip's corpus lacks (--mask_absent_classes): its probability is 0.
MASKED_LOGIT = -1e9


def class_weights(label_ids: Sequence[int], num_labels: int) -> torch.Tensor:
    """``n / (k * count)`` per class (scikit-learn's "balanced"); a class absent from training gets 0."""
    counts = Counter(label_ids)
    total = len(label_ids)
    present = sum(1 for index in range(num_labels) if counts[index])
    return torch.tensor(
        [total / (present * counts[index]) if counts[index] else 0.0 for index in range(num_labels)], dtype=torch.float32
    )


def corpus_class_weights(label_ids: Sequence[int], corpora: Sequence[str | None]) -> list[float]:
    """Per-clip loss weights ``n / (corpora * classes in the clip's corpus * clips in its (corpus, class)
    cell)``: each corpus carries the same total weight, and each class within a corpus the same share
    of it, so the largest corpus does not dominate. The weights sum to ``n``."""
    if len(label_ids) != len(corpora):
        raise ValueError(f"{len(label_ids)} labels but {len(corpora)} corpora.")
    cells = Counter(zip(corpora, label_ids))
    classes_in = Counter(corpus for corpus, _ in cells)
    total = len(label_ids)
    return [total / (len(classes_in) * classes_in[corpus] * cells[(corpus, label)]) for corpus, label in zip(corpora, label_ids)]


def allowed_classes(label_ids: Sequence[int], corpora: Sequence[str | None], num_labels: int) -> np.ndarray:
    """``(clips, num_labels)`` booleans: the classes each clip's corpus has among these clips."""
    present: dict[str | None, set[int]] = {}
    for corpus, label in zip(corpora, label_ids):
        present.setdefault(corpus, set()).add(int(label))
    allowed = np.zeros((len(label_ids), num_labels), dtype=bool)
    for row, corpus in enumerate(corpora):
        allowed[row, sorted(present[corpus])] = True
    return allowed


def masked_logits(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """``logits`` with the classes not ``allowed`` (same shape, or ``(batch, labels)`` against
    ``(batch, members, labels)``) set to :data:`MASKED_LOGIT`: no gradient reaches them."""
    if allowed is None:
        return logits
    if allowed.dim() < logits.dim():
        allowed = allowed.unsqueeze(1).expand_as(logits)
    return logits.masked_fill(~allowed.bool(), MASKED_LOGIT)


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
    """Trainer ``compute_metrics``: accuracy, macro-F1 and UAR from ser.core.metrics."""
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
        inputs = dict(inputs)
        # Per-clip loss weights (--class_balance corpus_class) and allowed classes (--mask_absent_classes).
        loss_weight = inputs.pop("loss_weight", None)
        allowed = inputs.pop("allowed_classes", None)
        mixing = self.mixup_alpha > 0 and model.training
        # Trainer's own path would smooth an ensemble's averaged logits and knows no class weights.
        own_loss = self.class_weights is not None or mixing or self.args.label_smoothing_factor > 0 or loss_weight is not None or allowed is not None
        if "labels" not in inputs or not own_loss:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        labels = inputs.pop("labels")
        if mixing:
            if loss_weight is not None or allowed is not None:
                raise ValueError("mixup does not combine with per-clip loss weights or class masks.")
            inputs, partner, mix_weight = mix_batch(inputs, self.mixup_alpha)
        outputs = model(**inputs)
        loss = self._classification_loss(outputs, labels, loss_weight, allowed)
        if mixing:
            loss = mix_weight * loss + (1 - mix_weight) * self._classification_loss(outputs, labels[partner])
        return (loss, outputs) if return_outputs else loss

    def _classification_loss(
        self, outputs, labels: torch.Tensor, loss_weight: torch.Tensor | None = None, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        smoothing = self.args.label_smoothing_factor
        member_logits = outputs.get("member_logits") if isinstance(outputs, dict) else None
        if loss_weight is not None or allowed is not None:
            # Each clip's (members') cross-entropy over its corpus's classes, times its weight; the mean.
            stacked = (member_logits if member_logits is not None else logits.unsqueeze(1)).float()
            stacked = masked_logits(stacked, allowed)
            members = stacked.shape[1]
            per_clip = torch.nn.functional.cross_entropy(
                stacked.reshape(-1, stacked.shape[-1]), labels.repeat_interleave(members), weight=weight, reduction="none", label_smoothing=smoothing
            ).reshape(-1, members).mean(dim=1)
            if loss_weight is not None:
                per_clip = per_clip * loss_weight.to(per_clip.dtype)
            return per_clip.mean()
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


