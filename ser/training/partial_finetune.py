"""Fine-tuning the top blocks of a Whisper encoder on the CPU, from cached hidden states.

The hidden state below the first trained block is computed once per clip (and per fixed augmented copy)
and kept in memory as float16, trimmed to the clip's own positions. Each step then runs only the trained
blocks and the head, so an epoch costs a fraction of a full encoder pass. The transformers ``Trainer``
trains :class:`PartialFineTuning` (the blocks at ``--learning_rate``, the head at
``--head_learning_rate``), with the same per-clip loss weights and absent-class masks as the head-only
recipes, and optionally a corpus adversary behind a gradient-reversal layer
(``--corpus_adversarial_weight``): a linear head that learns to tell the training corpora apart from the
embedding, whose reversed gradient pushes the trained blocks to hide it.

Afterwards the encoder is frozen again and train.py goes on as for a frozen encoder, embedding every clip
through the fine-tuned blocks (from the same cached states) and refitting the linear heads by L-BFGS.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ser.data.corpus import Clip
from ser.training.arguments import TrainSetupError
from ser.training.trainer import masked_logits

logger = logging.getLogger("train")

#: Clips per batch when computing or pooling cached states (inference only).
STATE_BATCH = 16


class StateDataset(torch.utils.data.Dataset):
    """Cached hidden states ``(positions, d_model)`` (float16) + label ids + per-clip extras + corpus ids."""

    def __init__(self, states: Sequence[torch.Tensor], label_ids: Sequence[int], corpus_ids: Sequence[int], extras: dict[str, torch.Tensor]):
        self.states, self.label_ids, self.corpus_ids, self.extras = list(states), [int(i) for i in label_ids], [int(i) for i in corpus_ids], extras

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, index: int) -> dict:
        item = {"hidden_state": self.states[index], "labels": self.label_ids[index], "corpus_ids": self.corpus_ids[index]}
        return item | {key: values[index] for key, values in self.extras.items()}


def collate_states(features: list[dict]) -> dict[str, torch.Tensor]:
    """Pad the states to the longest in the batch (zeros, masked out) and stack the rest."""
    longest = max(len(feature["hidden_state"]) for feature in features)
    width = features[0]["hidden_state"].shape[-1]
    hidden = torch.zeros(len(features), longest, width)
    mask = torch.zeros(len(features), longest)
    for row, feature in enumerate(features):
        length = len(feature["hidden_state"])
        hidden[row, :length] = feature["hidden_state"].float()
        mask[row, :length] = 1.0
    batch = {"hidden_state": hidden, "hidden_mask": mask}
    for key in features[0]:
        if key != "hidden_state":
            batch[key] = torch.stack([torch.as_tensor(feature[key]) for feature in features])
    return batch


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        return -ctx.weight * gradient, None


def reverse_gradient(inputs: torch.Tensor, weight: float) -> torch.Tensor:
    """Identity forward; the gradient times ``-weight`` backward (Ganin & Lempitsky, 2015)."""
    return _ReverseGradient.apply(inputs, weight)


class PartialFineTuning(nn.Module):
    """A WhisperSer's blocks above hidden state ``state`` and its head, trained from cached states; with
    ``corpora > 1`` and ``adversarial_weight > 0``, a corpus adversary behind a gradient reversal."""

    def __init__(self, model, state: int, corpora: int = 1, adversarial_weight: float = 0.0):
        super().__init__()
        self.model, self.state, self.adversarial_weight = model, state, adversarial_weight
        features = model.heads[0].classifier.in_features if isinstance(model.heads[0].classifier, nn.Linear) else None
        self.adversary = nn.Linear(features, corpora) if adversarial_weight > 0 and corpora > 1 and features else None

    def forward(self, hidden_state, hidden_mask, labels=None, corpus_ids=None, loss_weight=None, allowed_classes=None):
        embedding = self.model.embed_from_state(hidden_state, hidden_mask, self.state)
        logits, _ = self.model.classify_embedding(embedding)
        if labels is None:
            return {"logits": logits}
        per_clip = nn.functional.cross_entropy(masked_logits(logits, allowed_classes), labels, reduction="none")
        if loss_weight is not None:
            per_clip = per_clip * loss_weight
        loss = per_clip.mean()
        if self.adversary is not None and corpus_ids is not None:
            standardised = (embedding - self.model.embedding_mean) / torch.sqrt(self.model.embedding_var + 1e-5)
            features = reverse_gradient(self.model.heads[0].pool(standardised), self.adversarial_weight)
            loss = loss + nn.functional.cross_entropy(self.adversary(features), corpus_ids)
        return {"loss": loss, "logits": logits}


def _clip_seed(path: str, copy: str) -> int:
    return int(hashlib.sha256(f"{path}|{copy}".encode()).hexdigest()[:8], 16)


@torch.inference_mode()
def cached_states(model, feature_extractor, waveforms: Sequence[np.ndarray], state: int) -> list[torch.Tensor]:
    """Hidden state ``state`` of each waveform, float16, trimmed to its own positions (batched by length)."""
    order = sorted(range(len(waveforms)), key=lambda index: len(waveforms[index]))
    result: list[torch.Tensor | None] = [None] * len(waveforms)
    for start in range(0, len(order), STATE_BATCH):
        indices = order[start : start + STATE_BATCH]
        batch = feature_extractor([waveforms[i] for i in indices], sampling_rate=feature_extractor.sampling_rate, padding=True,
                                  return_attention_mask=True, return_tensors="pt")  # fmt: skip
        hidden, mask = model.hidden_state(batch["input_values"], batch["attention_mask"], state)
        for row, index in enumerate(indices):
            result[index] = hidden[row, : int(mask[row].sum())].to(torch.float16).clone()
    return result


@torch.inference_mode()
def embeddings_from_states(model, states: Sequence[torch.Tensor], state: int) -> np.ndarray:
    """``(clips, layers, features)`` through the blocks above ``state`` (batched by length)."""
    order = sorted(range(len(states)), key=lambda index: len(states[index]))
    result: list[np.ndarray | None] = [None] * len(states)
    for start in range(0, len(order), STATE_BATCH):
        indices = order[start : start + STATE_BATCH]
        batch = collate_states([{"hidden_state": states[i]} for i in indices])
        pooled = model.embed_from_state(batch["hidden_state"], batch["hidden_mask"], state).float().numpy()
        for row, index in enumerate(indices):
            result[index] = pooled[row]
    return np.stack(result)


def fine_tune_on_cached_states(
    model, feature_extractor, data_args, model_args, training_args, split, waveform_of: dict, label2id: dict, training_extras
) -> Callable[[list[Clip], str], np.ndarray]:
    """Train the top ``--trainable_encoder_layers`` blocks and the head from cached states; returns
    ``embed(clips, copy)``, the fine-tuned model's embeddings of those clips (from the same states), for
    train.py's frozen-encoder path. Leaves the encoder frozen again."""
    from transformers import Trainer

    from ser.audio.augment import fixed_copy, parse_fixed_copies
    from ser.core.statistics import EmbeddingStatistics
    from ser.inference.embeddings import ORIGINAL
    from ser.training.frozen_encoder import load_statistics
    from ser.training.linear_head import fit_linear_head

    trained = model_args.trainable_encoder_layers
    state = model.config.blocks_used - trained
    if trained <= 0 or state < 0:
        raise TrainSetupError(f"--cache_frozen_states needs 1..{model.config.blocks_used} --trainable_encoder_layers, got {trained}.")
    if min(model.config.layers) < state:
        raise TrainSetupError(f"--cache_frozen_states: the chosen layers {model.config.layers} must all lie at or above hidden state {state}, the first one trained.")
    if model_args.head_solver != "lbfgs":
        raise TrainSetupError("--cache_frozen_states refits the linear heads after fine-tuning: set --head_solver lbfgs.")
    try:
        copies = parse_fixed_copies(data_args.embedding_copies)
    except ValueError as error:
        raise TrainSetupError(f"--embedding_copies: {error}") from error
    sample_rate = int(feature_extractor.sampling_rate)
    started = time.perf_counter()
    model.eval()
    states: dict[tuple[str, str], torch.Tensor] = {}

    def compute(clips: list[Clip], copy: str) -> None:
        missing = [clip.path for clip in clips if (clip.path, copy) not in states]
        if not missing:
            return
        waveforms = [waveform_of[path] if copy == ORIGINAL else fixed_copy(waveform_of[path], copy, sample_rate, _clip_seed(path, copy)) for path in missing]
        for path, hidden in zip(missing, cached_states(model, feature_extractor, waveforms, state)):
            states[(path, copy)] = hidden

    train_clips = split.train * (1 + len(copies))
    train_copies = [copy for copy in [ORIGINAL, *copies] for _ in split.train]
    for copy in [ORIGINAL, *copies]:
        compute(split.train, copy)
    compute(split.eval + split.test, ORIGINAL)
    logger.info("Cached hidden state %d of %d clips (%d copies each) in %.0f s", state, len(split.train), 1 + len(copies), time.perf_counter() - started)
    train_states = [states[(clip.path, copy)] for clip, copy in zip(train_clips, train_copies)]

    # Start from the frozen recipe's answer: the training statistics and the L-BFGS head on them.
    from ser.training.datasets import EmbeddingDataset

    extras = training_extras(train_clips) if training_extras else {}
    labels = [label2id[clip.label] for clip in train_clips]
    initial = embeddings_from_states(model, train_states, state)
    load_statistics(model, EmbeddingStatistics.of(initial))
    fit_linear_head(model, EmbeddingDataset(initial, labels, **extras), model_args.l2_C)

    corpora = sorted({str(clip.corpus) for clip in train_clips})
    dataset = StateDataset(train_states, labels, [corpora.index(str(clip.corpus)) for clip in train_clips], _extras_tensors(extras, len(labels)))
    model.freeze_encoder(trained)
    wrapper = PartialFineTuning(model, state, len(corpora), model_args.corpus_adversarial_weight)
    block_parameters = [parameter for parameter in model.encoder.parameters() if parameter.requires_grad]
    head_parameters = [parameter for parameter in model.heads.parameters()] + (list(wrapper.adversary.parameters()) if wrapper.adversary else [])
    optimizer = torch.optim.AdamW(
        [{"params": block_parameters, "lr": training_args.learning_rate}, {"params": head_parameters, "lr": model_args.head_learning_rate}],
        weight_decay=training_args.weight_decay,
    )
    trainer = Trainer(model=wrapper, args=training_args, train_dataset=dataset, data_collator=collate_states, optimizers=(optimizer, None))
    trainer.train()
    model.freeze_encoder(0)
    model.eval()
    logger.info("Fine-tuned blocks %d-%d and the head from cached states in %.0f s", state + 1, model.config.blocks_used, time.perf_counter() - started)

    def embed(clips: list[Clip], copy: str) -> np.ndarray:
        compute(clips, copy)
        return embeddings_from_states(model, [states[(clip.path, copy)] for clip in clips], state)

    return embed


def _extras_tensors(extras: dict, count: int) -> dict[str, torch.Tensor]:
    """train.py's training extras (``loss_weights``, ``allowed_classes``) as the per-clip tensors the model's loss reads."""
    from ser.training.datasets import per_clip_extras

    return per_clip_extras(count, extras.get("loss_weights"), extras.get("allowed_classes"))
