"""EmotionCnn as an ensemble in one checkpoint (members average as probabilities and train on
their own losses), and its silence handling (silent frames change nothing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synth_clip

from ser.models import EmotionCnnConfig, EmotionCnnForAudioClassification
from ser.models.emotion_cnn import member_cross_entropy, speech_frames
from ser.training.trainer import SerTrainer

LABELS = ["angry", "disgusted", "fearful", "happy", "neutral", "sad"]


def _config(ensemble_size: int, **overrides) -> EmotionCnnConfig:
    return EmotionCnnConfig(
        encoder_type="tdnn",
        channels=(8, 8),
        feature_normalization="utterance_mean",
        append_utterance_spectrum=True,
        ensemble_size=ensemble_size,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: index for index, label in enumerate(LABELS)},
        **overrides,
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


# -- silence --------------------------------------------------------------------------------------
def test_speech_frames_keeps_frames_within_the_threshold_of_the_loudest():
    # One mel bin, so a frame's energy is its log-mel value; 10 dB of power = ln(10) nats.
    ln10 = float(np.log(10.0))
    log_mel = torch.tensor([[[0.0, -ln10, -2.5 * ln10, -4 * ln10, 5.0]]])
    valid = torch.tensor([[[1.0, 1.0, 1.0, 1.0, 0.0]]])  # the loud last frame is padding: ignored
    assert speech_frames(log_mel, valid, threshold_db=20.0).tolist() == [[[1.0, 1.0, 0.0, 0.0, 0.0]]]
    assert speech_frames(log_mel, valid, threshold_db=30.0).tolist() == [[[1.0, 1.0, 1.0, 0.0, 0.0]]]
    # All silence: the loudest frame always qualifies, so nothing divides by zero frames.
    silent = torch.full((1, 1, 3), -13.8)
    assert speech_frames(silent, torch.ones(1, 1, 3), threshold_db=20.0).tolist() == [[[1.0, 1.0, 1.0]]]


def _probabilities(model, waveform: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(model(input_values=torch.from_numpy(waveform)[None]).logits, dim=-1)[0]


@pytest.mark.parametrize("threshold_db", [None, 35.0])
def test_silence_around_speech_changes_nothing_only_with_the_threshold(threshold_db):
    torch.manual_seed(0)
    model = EmotionCnnForAudioClassification(_config(2, n_fft=1024, num_mel_bins=32, silence_threshold_db=threshold_db)).eval()
    speech = synth_clip(3, seed=7, duration_s=1.0)
    hop = model.config.hop_length

    def padded(before_s: float, after_s: float) -> np.ndarray:
        # Whole hops of silence, so the speech frames line up in every version.
        before, after = (round(seconds * 16_000 / hop) * hop for seconds in (before_s, after_s))
        return np.concatenate([np.zeros(before, np.float32), speech, np.zeros(after, np.float32)])

    short, long = _probabilities(model, padded(0.2, 0.2)), _probabilities(model, padded(1.5, 2.0))
    difference = float((short - long).abs().max())
    if threshold_db is None:
        assert difference > 1e-3  # without it, the silent frames move the statistics and the answer
    else:
        assert difference < 1e-4


def test_silence_threshold_is_validated():
    with pytest.raises(ValueError, match="must be positive"):
        _config(1, silence_threshold_db=0.0)
    with pytest.raises(ValueError, match="needs encoder_type 'tdnn'"):
        EmotionCnnConfig(encoder_type="cnn2d", silence_threshold_db=35.0)


def _pitch_channels(waveform: np.ndarray, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The pitch tracker's ``(3, frames)`` output for a 16 kHz clip, on the bundled frontend (64 ms window)."""
    from ser.models.emotion_cnn import LogMelFrontend, PitchTracker

    config = _config(1, n_fft=1024, num_mel_bins=128, pitch_features=True)
    power = LogMelFrontend(config).power_spectrum(torch.from_numpy(waveform.astype(np.float32))[None])
    if frame_mask is None:
        frame_mask = torch.ones(1, 1, power.shape[-1])
    return PitchTracker(config)(power, frame_mask)[0]


def _sawtooth(pitch_hz: np.ndarray | float, duration_s: float = 1.0) -> np.ndarray:
    pitch_hz = np.broadcast_to(pitch_hz, (int(16_000 * duration_s),))
    phase = 2 * np.pi * np.cumsum(pitch_hz) / 16_000
    return sum(np.sin(k * phase) / k for k in range(1, 20))


@pytest.mark.parametrize("pitch_hz", [65.0, 120.0, 200.0, 450.0])
def test_pitch_tracker_finds_the_pitch_of_a_harmonic_tone(pitch_hz):
    periodicity, pitch, intonation = _pitch_channels(_sawtooth(pitch_hz))
    assert periodicity.min() > 0.95
    # Within one grid step (a quarter semitone) on every frame, no octave errors; a steady tone has no intonation.
    assert (12 * (pitch - np.log2(pitch_hz / 150.0))).abs().max() < 0.25
    assert intonation.abs().max() < 1e-5


def test_pitch_tracker_calls_noise_unvoiced_and_masked_frames_empty():
    noise = np.random.default_rng(0).standard_normal(16_000)
    periodicity, pitch, intonation = _pitch_channels(noise)
    assert periodicity.mean() < 0.45 and (pitch == 0).all() and (intonation == 0).all()
    tone = _sawtooth(200.0)
    frames = _pitch_channels(tone).shape[-1]
    mask = torch.ones(1, 1, frames)
    mask[..., frames // 2 :] = 0
    masked = _pitch_channels(tone, mask)
    assert (masked[:, frames // 2 :] == 0).all() and (masked[1, : frames // 2] != 0).all()


def test_intonation_is_pitch_relative_to_the_voiced_mean():
    # An octave glide, 100 -> 200 Hz: intonation rises by an octave and averages zero over the voiced frames.
    glide = _sawtooth(100.0 * 2 ** np.linspace(0, 1, 16_000))
    _, pitch, intonation = _pitch_channels(glide)
    voiced = pitch != 0
    assert voiced.all()
    assert abs(float(intonation.mean())) < 1e-5
    assert abs(float(intonation[-1] - intonation[0]) - 0.9) < 0.1  # the frames span ~0.93 of the second
    assert (intonation.diff() >= -1e-6).all()
    torch.testing.assert_close(intonation, pitch - pitch.mean())


def test_pitch_features_are_validated():
    with pytest.raises(ValueError, match="pitch_features needs encoder_type 'tdnn'"):
        EmotionCnnConfig(encoder_type="cnn2d", pitch_features=True)
    with pytest.raises(ValueError, match="pitch_features needs n_fft"):
        EmotionCnnForAudioClassification(_config(1, pitch_features=True))  # a 25 ms window holds too few periods
    model = EmotionCnnForAudioClassification(_config(2, n_fft=1024, num_mel_bins=32, pitch_features=True)).eval()
    values, mask = _batch()
    with torch.no_grad():
        assert model(input_values=values, attention_mask=mask).logits.shape == (3, len(LABELS))
