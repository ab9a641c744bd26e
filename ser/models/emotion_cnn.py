"""A small log-mel CNN for speech emotion, sized for CPU training and serving.

It is an ordinary transformers model (``PreTrainedModel`` + ``PretrainedConfig``, registered with
the Auto classes in ``ser.models``), so ``train.py``, the predictor and ONNX export treat it like
any hub checkpoint. It consumes the same raw 16 kHz ``input_values`` as wav2vec2 and computes its
log-mel spectrogram inside ``forward``: the STFT is a fixed convolution, so the whole thing exports
as one graph and there is no second feature pipeline to keep in sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import librosa
import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class EmotionCnnConfig(PretrainedConfig):
    model_type = "emotion_cnn"
    # Trainer's evaluation keeps only the ensemble's logits.
    keys_to_ignore_at_inference = ["member_logits"]

    def __init__(
        self,
        sampling_rate: int = 16_000,
        n_fft: int = 400,
        hop_length: int = 160,
        num_mel_bins: int = 64,
        fmin_hz: float = 50.0,
        fmax_hz: float = 8_000.0,
        feature_normalization: str = "utterance",
        encoder_type: str = "cnn2d",
        channels: tuple[int, ...] = (32, 64, 128, 128),
        dropout: float = 0.3,
        spec_augment_time_masks: int = 2,
        spec_augment_time_width: int = 20,
        spec_augment_freq_masks: int = 2,
        spec_augment_freq_width: int = 8,
        spec_augment_freq_warp: float = 0.0,
        append_utterance_spectrum: bool = False,
        ensemble_size: int = 1,
        silence_threshold_db: float | None = None,
        pitch_features: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if feature_normalization not in {"utterance", "utterance_mean", "none"}:
            raise ValueError(f"feature_normalization must be 'utterance', 'utterance_mean' or 'none', got {feature_normalization!r}")
        self.sampling_rate = sampling_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.num_mel_bins = num_mel_bins
        self.fmin_hz = fmin_hz
        self.fmax_hz = fmax_hz
        if encoder_type not in {"cnn2d", "tdnn"}:
            raise ValueError(f"encoder_type must be 'cnn2d' or 'tdnn', got {encoder_type!r}")
        self.feature_normalization = feature_normalization
        self.encoder_type = encoder_type
        self.channels = list(channels)
        self.dropout = dropout
        self.spec_augment_time_masks = spec_augment_time_masks
        self.spec_augment_time_width = spec_augment_time_width
        self.spec_augment_freq_masks = spec_augment_freq_masks
        self.spec_augment_freq_width = spec_augment_freq_width
        self.spec_augment_freq_warp = spec_augment_freq_warp
        self.append_utterance_spectrum = append_utterance_spectrum
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        self.ensemble_size = ensemble_size
        if silence_threshold_db is not None and silence_threshold_db <= 0:
            raise ValueError(f"silence_threshold_db must be positive (or None to keep every frame), got {silence_threshold_db}")
        if silence_threshold_db is not None and encoder_type != "tdnn":
            raise ValueError("silence_threshold_db needs encoder_type 'tdnn' (its frames map one-to-one onto the pooled frames).")
        # Frames this many dB below the clip's loudest frame are silence: left out of the normalisation
        # statistics and the pooling, so how much silence surrounds the speech does not change the answer.
        self.silence_threshold_db = silence_threshold_db
        if pitch_features and encoder_type != "tdnn":
            raise ValueError("pitch_features needs encoder_type 'tdnn' (they are extra input channels per frame).")
        # Three pitch channels per frame beside the log-mel (see PitchTracker): a mel filterbank blurs
        # the harmonics that carry intonation, which is most of what emotion adds to a voice.
        self.pitch_features = pitch_features


class LogMelFrontend(nn.Module):
    """Waveform ``(batch, samples)`` -> power spectrum -> log-mel ``(batch, mels, frames)``; ``num_frames`` counts the valid frames."""

    def __init__(self, config: EmotionCnnConfig):
        super().__init__()
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        window = torch.hann_window(config.n_fft, periodic=True, dtype=torch.float64)
        frequencies = torch.arange(config.n_fft // 2 + 1, dtype=torch.float64)
        time = torch.arange(config.n_fft, dtype=torch.float64)
        angle = 2 * math.pi * frequencies[:, None] * time[None, :] / config.n_fft
        # Real and imaginary DFT rows, windowed: a strided conv1d is the STFT.
        kernel = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window
        # Persistent buffers: transformers builds models on the meta device, so buffers that are not
        # in the checkpoint would come back uninitialised.
        self.register_buffer("dft_kernel", kernel.float().unsqueeze(1))
        mel = librosa.filters.mel(
            sr=config.sampling_rate, n_fft=config.n_fft, n_mels=config.num_mel_bins, fmin=config.fmin_hz, fmax=config.fmax_hz
        )
        self.register_buffer("mel_filters", torch.from_numpy(np.asarray(mel, dtype=np.float32)))

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_samples - self.n_fft, self.hop_length, rounding_mode="floor").clamp(min=0) + 1

    def power_spectrum(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> ``(batch, n_fft // 2 + 1, frames)``."""
        padded = nn.functional.pad(waveform, (0, max(0, self.n_fft - waveform.shape[-1])))
        spectrum = nn.functional.conv1d(padded.unsqueeze(1), self.dft_kernel, stride=self.hop_length)
        real, imaginary = spectrum.chunk(2, dim=1)
        return real.square() + imaginary.square()

    def log_mel(self, power: torch.Tensor) -> torch.Tensor:
        """Power spectrum -> ``(batch, mels, frames)``; the power also feeds the pitch tracker."""
        return torch.log(torch.matmul(self.mel_filters, power) + 1e-6)


class PitchTracker(nn.Module):
    """Per-frame pitch from the frontend's power spectrum: ``(batch, bins, frames)`` -> ``(batch, 3, frames)``.

    The autocorrelation is the inverse DFT of the power spectrum (Wiener-Khinchin), evaluated on a
    log-spaced grid of candidate periods and divided by the analysis window's own autocorrelation,
    as in Boersma (1993) / Praat. Channels: periodicity (the normalised autocorrelation at the chosen
    period, ~1 for a steady vowel, low for noise), log2(F0 / 150 Hz), and log2 F0 minus its mean over
    the utterance's voiced frames (intonation, free of the speaker's pitch level); both pitch channels
    are 0 on unvoiced frames. Fixed buffers, no weights: it exports to ONNX with the rest.
    """

    CHANNELS = 3  # periodicity, pitch, intonation
    #: Adult speech, low male to high female voices; not tuned here.
    MIN_PITCH_HZ = 60.0
    MAX_PITCH_HZ = 500.0
    STEPS_PER_SEMITONE = 4
    #: Praat's defaults (``To Pitch (ac)``), not tuned here.
    VOICING_THRESHOLD = 0.45
    OCTAVE_COST = 0.01  # per octave, favours the higher of two candidates an octave apart
    REFERENCE_PITCH_HZ = 150.0
    # Harmonics above ~2 kHz add formant noise, not periodicity: the autocorrelation uses the band below.
    MAX_FREQUENCY_HZ = 2_000.0

    def __init__(self, config: EmotionCnnConfig):
        super().__init__()
        if config.sampling_rate / self.MIN_PITCH_HZ >= config.n_fft / 2:
            raise ValueError(
                f"pitch_features needs n_fft > {2 * config.sampling_rate / self.MIN_PITCH_HZ:.0f} samples "
                f"(two periods of {self.MIN_PITCH_HZ:.0f} Hz), got {config.n_fft}."
            )
        semitones = 12 * math.log2(self.MAX_PITCH_HZ / self.MIN_PITCH_HZ)
        steps = torch.arange(int(semitones * self.STEPS_PER_SEMITONE) + 1, dtype=torch.float64)
        log2_pitch = math.log2(self.MIN_PITCH_HZ) + steps / (12 * self.STEPS_PER_SEMITONE)
        period_samples = config.sampling_rate / torch.exp2(log2_pitch)
        # The band from the lowest pitch up: bins below it hold the frame's DC offset and hum, which
        # would correlate at every lag and make noise look voiced.
        self.first_bin = math.ceil(self.MIN_PITCH_HZ * config.n_fft / config.sampling_rate)
        last_bin = int(self.MAX_FREQUENCY_HZ * config.n_fft / config.sampling_rate)
        # r(lag) = 2 sum_k P_k cos(2 pi k lag / n_fft) over the band (each bin and its mirror), at any real lag.
        band = torch.arange(self.first_bin, last_bin + 1, dtype=torch.float64)
        cosine = torch.cos(2 * math.pi * period_samples[:, None] * band[None, :] / config.n_fft)
        # The window's own autocorrelation, over every bin: the signal's is roughly the product of the two.
        window = torch.hann_window(config.n_fft, periodic=True, dtype=torch.float64)
        window_power = torch.fft.rfft(window).abs().square()
        all_bins = torch.arange(len(window_power), dtype=torch.float64)
        weights = torch.full_like(window_power, 2.0)
        weights[0] = 1.0
        all_cosine = torch.cos(2 * math.pi * period_samples[:, None] * all_bins[None, :] / config.n_fft)
        window_autocorrelation = (all_cosine @ (weights * window_power)) / (weights * window_power).sum()
        # Dividing by it undoes the window's taper, so a periodic frame scores ~1 at its period.
        self.register_buffer("lag_cosine", (cosine / window_autocorrelation[:, None]).float())
        self.register_buffer("log2_pitch", log2_pitch.float())
        self.register_buffer("octave_cost", (self.OCTAVE_COST * (log2_pitch - math.log2(self.MIN_PITCH_HZ))).float())

    def forward(self, power: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        power = power[:, self.first_bin : self.first_bin + self.lag_cosine.shape[1]]
        energy = power.sum(dim=1).clamp(min=1e-10)
        correlation = torch.einsum("gk,bkt->bgt", self.lag_cosine, power) / energy.unsqueeze(1)  # (batch, grid, frames)
        best = torch.argmax(correlation + self.octave_cost[None, :, None], dim=1, keepdim=True)  # (batch, 1, frames)
        periodicity = torch.gather(correlation, 1, best).clamp(0.0, 1.0)
        voiced = (periodicity >= self.VOICING_THRESHOLD).to(power.dtype) * frame_mask
        pitch = (self.log2_pitch[best] - math.log2(self.REFERENCE_PITCH_HZ)) * voiced
        mean_pitch = pitch.sum(dim=-1, keepdim=True) / voiced.sum(dim=-1, keepdim=True).clamp(min=1.0)
        intonation = (pitch - mean_pitch) * voiced
        return torch.cat([periodicity * frame_mask, pitch, intonation], dim=1)


def _masked_mean_std(features: torch.Tensor, mask: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    count = mask.sum(dim=dim, keepdim=True).clamp(min=1.0)
    mean = (features * mask).sum(dim=dim, keepdim=True) / count
    variance = ((features - mean).square() * mask).sum(dim=dim, keepdim=True) / count
    return mean, torch.sqrt(variance + 1e-5)


class ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )


class TdnnBlock(nn.Module):
    """Dilated 1-D convolution over time with mel bins as channels (x-vector / ECAPA style)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)
        self.residual = in_channels == out_channels

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        output = torch.relu(self.norm(self.conv(hidden)))
        return output + hidden if self.residual else output


@dataclass
class EmotionCnnOutput(SequenceClassifierOutput):
    """``logits`` are the ensemble's (log of the members' mean probability); ``member_logits`` is
    ``(batch, members, labels)``, so a trainer can give every member its own loss."""

    member_logits: torch.Tensor | None = None


class EmotionCnnMember(nn.Module):
    """One classifier over normalised log-mel: encoder, attentive statistics pooling, linear head."""

    def __init__(self, config: EmotionCnnConfig):
        super().__init__()
        blocks = []
        if config.encoder_type == "cnn2d":
            in_channels = 1
            for out_channels in config.channels:
                blocks.append(ConvBlock(in_channels, out_channels))
                in_channels = out_channels
        else:
            in_channels = config.num_mel_bins + (PitchTracker.CHANNELS if config.pitch_features else 0)
            for index, out_channels in enumerate(config.channels):
                kernel_size, dilation = (5, 1) if index == 0 else (3, index + 1)
                blocks.append(TdnnBlock(in_channels, out_channels, kernel_size, dilation))
                in_channels = out_channels
        self.encoder_type = config.encoder_type
        self.append_utterance_spectrum = config.append_utterance_spectrum
        self.encoder = nn.Sequential(*blocks)
        self.attention = nn.Conv1d(in_channels, 1, kernel_size=1)
        self.dropout = nn.Dropout(config.dropout)
        spectrum_features = config.num_mel_bins if config.append_utterance_spectrum else 0
        self.classifier = nn.Linear(2 * in_channels + spectrum_features, config.num_labels)

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor, utterance_spectrum: torch.Tensor | None) -> torch.Tensor:
        if self.encoder_type == "cnn2d":
            hidden = self.encoder(features.unsqueeze(1))  # (batch, channels, mels', frames')
            hidden = hidden.mean(dim=2)  # pool frequency -> (batch, channels, frames')
        else:
            hidden = self.encoder(features)  # (batch, channels, frames)
        if self.encoder_type == "tdnn":
            pooled_mask = frame_mask  # no time downsampling: frames map one-to-one
        else:
            pooled_mask = self._pooled_prefix_mask(frame_mask, hidden.shape[-1])
        scores = self.attention(hidden).masked_fill(pooled_mask == 0, -1e4)
        weights = torch.softmax(scores, dim=-1)
        mean = (hidden * weights).sum(dim=-1)
        std = torch.sqrt(((hidden - mean.unsqueeze(-1)).square() * weights).sum(dim=-1) + 1e-5)
        pooled = [mean, std]
        if self.append_utterance_spectrum:
            pooled.append(utterance_spectrum)
        return self.classifier(self.dropout(torch.cat(pooled, dim=-1)))

    @staticmethod
    def _pooled_prefix_mask(frame_mask: torch.Tensor, pooled_frames: int) -> torch.Tensor:
        # = adaptive_max_pool1d(frame_mask, pooled_frames), written so it exports to ONNX with a dynamic
        # time axis: bin i starts at floor(i * frames / pooled_frames) and the mask is a prefix, so the
        # bin holds a valid frame iff it starts before the number of valid frames.
        starts = torch.div(
            torch.arange(pooled_frames, device=frame_mask.device) * frame_mask.shape[-1], pooled_frames, rounding_mode="floor"
        )
        return (starts[None, :] < frame_mask.sum(dim=-1)).to(frame_mask.dtype).unsqueeze(1)  # (batch, 1, frames')


class EmotionCnnForAudioClassification(PreTrainedModel):
    config_class = EmotionCnnConfig
    base_model_prefix = "emotion_cnn"
    main_input_name = "input_values"

    def __init__(self, config: EmotionCnnConfig):
        super().__init__(config)
        self.frontend = LogMelFrontend(config)
        self.pitch_tracker = PitchTracker(config) if config.pitch_features else None
        # Members share the frontend and differ by initialisation (and their own SpecAugment masks):
        # averaging their probabilities is a deep ensemble in one checkpoint and one ONNX graph.
        self.members = nn.ModuleList(EmotionCnnMember(config) for _ in range(config.ensemble_size))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _spec_augment(self, features: torch.Tensor) -> torch.Tensor:
        config = self.config
        batch, mels, frames = features.shape
        masked = features.clone()
        if config.spec_augment_freq_warp > 0:
            # Stretch the mel axis by a random factor per clip: a different vocal tract length (VTLP),
            # i.e. more speakers than the training set has.
            bins = torch.arange(mels, dtype=features.dtype, device=features.device)
            for index in range(batch):
                factor = 1.0 + (2 * float(torch.rand(())) - 1) * config.spec_augment_freq_warp
                position = (bins * factor).clamp(max=mels - 1)
                low = position.floor().long()
                high = (low + 1).clamp(max=mels - 1)
                weight = (position - low.to(features.dtype)).unsqueeze(-1)
                masked[index] = features[index, low] * (1 - weight) + features[index, high] * weight
        for index in range(batch):
            for _ in range(config.spec_augment_freq_masks):
                width = int(torch.randint(0, config.spec_augment_freq_width + 1, ()))
                start = int(torch.randint(0, max(1, mels - width), ()))
                masked[index, start : start + width, :] = 0.0
            for _ in range(config.spec_augment_time_masks):
                width = int(torch.randint(0, config.spec_augment_time_width + 1, ()))
                start = int(torch.randint(0, max(1, frames - width), ()))
                masked[index, :, start : start + width] = 0.0
        return masked


    def classify_features(
        self, features: torch.Tensor, frame_mask: torch.Tensor, pitch: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel ``(batch, mels, frames)``, frame mask ``(batch, 1, frames)`` and, with ``pitch_features``,
        the pitch channels ``(batch, 3, frames)`` -> (logits, member logits)."""
        if self.config.append_utterance_spectrum and self.config.feature_normalization == "none":
            raise ValueError("append_utterance_spectrum needs feature_normalization 'utterance' or 'utterance_mean'.")
        utterance_spectrum = None
        if self.config.feature_normalization != "none":
            # Per-utterance normalisation removes the channel and much of the speaker's timbre:
            # what is left is how this voice moves, which is what transfers across corpora.
            mean, std = _masked_mean_std(features, frame_mask, dim=2)
            features = features - mean
            # Mean normalisation removes the utterance's average spectrum, which carries arousal
            # (spectral tilt); it goes back in beside the pooled dynamics, centred per clip.
            utterance_spectrum = mean.squeeze(-1)
            utterance_spectrum = utterance_spectrum - utterance_spectrum.mean(dim=-1, keepdim=True)
            if self.config.feature_normalization == "utterance":
                features = features / std
        features = features * frame_mask
        if pitch is not None and not self.training:
            # No SpecAugment to apply per member: join the pitch channels once for all of them.
            features, pitch = torch.cat([features, pitch], dim=1), None
        member_logits = []
        for member in self.members:
            member_features = self._spec_augment(features) if self.training else features
            if pitch is not None:
                member_features = torch.cat([member_features, pitch], dim=1)
            member_logits.append(member(member_features, frame_mask, utterance_spectrum))
        stacked = torch.stack(member_logits, dim=1)  # (batch, members, labels)
        if len(self.members) == 1:
            return stacked[:, 0], stacked
        # Mean of the members' probabilities, returned as log-probabilities so softmax gives it back.
        logits = torch.logsumexp(torch.log_softmax(stacked, dim=-1), dim=1) - math.log(len(self.members))
        return logits, stacked

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> EmotionCnnOutput:
        power = self.frontend.power_spectrum(input_values)
        features = self.frontend.log_mel(power)  # (batch, mels, frames)
        if attention_mask is None:
            lengths = torch.full((input_values.shape[0],), input_values.shape[-1], device=input_values.device)
        else:
            lengths = attention_mask.sum(dim=-1)
        frames = torch.arange(features.shape[-1], device=features.device)
        frame_mask = (frames[None, :] < self.frontend.num_frames(lengths)[:, None]).to(features.dtype).unsqueeze(1)

        if self.config.silence_threshold_db is not None:
            frame_mask = frame_mask * speech_frames(features, frame_mask, self.config.silence_threshold_db)
        pitch = self.pitch_tracker(power, frame_mask) if self.pitch_tracker is not None else None
        logits, member_logits = self.classify_features(features, frame_mask, pitch)
        loss = None
        if labels is not None:
            loss = member_cross_entropy(member_logits, labels)
        return EmotionCnnOutput(loss=loss, logits=logits, member_logits=member_logits)


def speech_frames(log_mel: torch.Tensor, frame_mask: torch.Tensor, threshold_db: float) -> torch.Tensor:
    """``(batch, 1, frames)`` mask of the valid frames within ``threshold_db`` of the clip's loudest frame.

    The loudest frame always qualifies, so a clip of pure silence keeps all its frames.
    """
    frame_energy = torch.logsumexp(log_mel, dim=1, keepdim=True)  # natural log of the frame's mel power
    frame_energy = frame_energy.masked_fill(frame_mask == 0, -1e4)
    loudest = frame_energy.amax(dim=-1, keepdim=True)
    threshold = threshold_db * math.log(10.0) / 10.0  # dB of power -> nats
    return (frame_energy >= loudest - threshold).to(frame_mask.dtype) * frame_mask


def member_cross_entropy(
    member_logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean over members of each member's own cross-entropy: members train independently (a deep
    ensemble), rather than as one averaged model whose members would co-adapt."""
    members = member_logits.shape[1]
    return nn.functional.cross_entropy(
        member_logits.reshape(-1, member_logits.shape[-1]).float(),
        labels.repeat_interleave(members),
        weight=weight,
        label_smoothing=label_smoothing,
    )
