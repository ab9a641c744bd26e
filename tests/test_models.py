"""EmotionCnn as an ensemble in one checkpoint: members average as probabilities and train on
their own losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synth_clip

from ser.models import EmotionCnnConfig, EmotionCnnForAudioClassification
from ser.models.emotion_cnn import member_cross_entropy
from ser.training import SerTrainer

LABELS = ["angry", "disgusted", "fearful", "happy", "neutral", "sad"]


def _config(ensemble_size: int) -> EmotionCnnConfig:
    return EmotionCnnConfig(
        encoder_type="tdnn",
        channels=(8, 8),
        feature_normalization="utterance_mean",
        append_utterance_spectrum=True,
        ensemble_size=ensemble_size,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: index for index, label in enumerate(LABELS)},
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    clips = [synth_clip(index, seed=index, duration_s=duration_s) for index, duration_s in enumerate((0.5, 1.0, 0.8))]
    length = max(len(clip) for clip in clips)
    values = torch.zeros(len(clips), length)
    mask = torch.zeros(len(clips), length, dtype=torch.long)
    for row, clip in enumerate(clips):
        values[row, : len(clip)] = torch.from_numpy(clip)
        mask[row, : len(clip)] = 1
    return values, mask


def _eval_output(ensemble_size: int):
    """A freshly initialised model (seed 0) in eval mode, run on the test batch."""
    torch.manual_seed(0)
    model = EmotionCnnForAudioClassification(_config(ensemble_size)).eval()
    values, mask = _batch()
    with torch.no_grad():
        return model(input_values=values, attention_mask=mask)


def test_ensemble_probability_is_the_mean_of_its_members():
    output = _eval_output(3)
    assert output.member_logits.shape == (3, 3, len(LABELS))
    expected = torch.softmax(output.member_logits, dim=-1).mean(dim=1)
    torch.testing.assert_close(torch.softmax(output.logits, dim=-1), expected, atol=1e-6, rtol=0)
    # Members start from different weights, so they disagree.
    assert (output.member_logits[:, 0] - output.member_logits[:, 1]).abs().max() > 1e-3


def test_ensemble_of_copies_answers_like_the_single_model():
    torch.manual_seed(0)
    single = EmotionCnnForAudioClassification(_config(1)).eval()
    ensemble = EmotionCnnForAudioClassification(_config(4)).eval()
    for member in ensemble.members:
        member.load_state_dict(single.members[0].state_dict())
    values, mask = _batch()
    with torch.no_grad():
        expected = torch.softmax(single(input_values=values, attention_mask=mask).logits, dim=-1)
        actual = torch.softmax(ensemble(input_values=values, attention_mask=mask).logits, dim=-1)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


def test_single_member_logits_are_the_members_own():
    output = _eval_output(1)
    assert torch.equal(output.logits, output.member_logits[:, 0])


@pytest.mark.parametrize("weighted", [False, True])
def test_member_loss_is_the_mean_of_each_members_loss(weighted):
    torch.manual_seed(0)
    member_logits = torch.randn(5, 3, len(LABELS))
    labels = torch.tensor([0, 3, 5, 1, 1])
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0]) if weighted else None
    # Weighted cross-entropy is normalised by the summed weights, so pool the members' numerators.
    numerators, denominators = 0.0, 0.0
    for member in range(3):
        losses = torch.nn.functional.cross_entropy(member_logits[:, member], labels, weight=weight, reduction="none")
        numerators += losses.sum()
        denominators += weight[labels].sum() if weighted else len(labels)
    torch.testing.assert_close(member_cross_entropy(member_logits, labels, weight=weight), numerators / denominators)


def test_trainer_weighted_loss_trains_every_member(tmp_path):
    """SerTrainer's class-weighted loss uses the members' logits, not the ensemble average."""
    from transformers import TrainingArguments

    torch.manual_seed(0)
    model = EmotionCnnForAudioClassification(_config(2))
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    trainer = SerTrainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True), class_weights=weights
    )
    values, mask = _batch()
    labels = torch.tensor([0, 4, 2])
    model.eval()  # no dropout / SpecAugment, so the two computations see the same logits
    loss = trainer.compute_loss(model, {"input_values": values, "attention_mask": mask, "labels": labels})
    with torch.no_grad():
        output = model(input_values=values, attention_mask=mask)
    expected = member_cross_entropy(output.member_logits, labels, weight=weights)
    averaged = torch.nn.functional.cross_entropy(output.logits, labels, weight=weights)
    torch.testing.assert_close(loss.detach(), expected)
    assert not np.isclose(float(loss.detach()), float(averaged))
    loss.backward()
    for member in model.members:
        assert member.classifier.weight.grad is not None and member.classifier.weight.grad.abs().sum() > 0


def test_ensemble_size_must_be_positive():
    with pytest.raises(ValueError, match="ensemble_size"):
        EmotionCnnConfig(ensemble_size=0)
