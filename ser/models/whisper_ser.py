"""Speech emotion on a pretrained Whisper encoder, run on the clip's own length.

transformers' ``WhisperForAudioClassification`` only accepts 30 s of log-mel (3000 frames), ~12x
the work of a 3 s clip. This model runs the same encoder blocks on the clip's own frames: the
positional embeddings are sliced to the clip's length, padded frames are masked out of the
convolutions, the attention (a key-padding mask) and the pooling, so a batch of unequal clips gives
the clips' own answers. It consumes raw 16 kHz ``input_values`` like every model here and computes
Whisper's log-mel inside ``forward`` (one graph for ONNX, no second feature pipeline).

Head: for each chosen hidden state, the mean and standard deviation over the speech frames (the
utterance embedding, ``(batch, layers, 2 * d_model)``), standardised with statistics that can be
swapped (the training set's by default; a speaker's or a corpus's own for adaptation, see
``ser.core.statistics``), a learned softmax-weighted sum over the layers (or the layers side by
side, ``layer_pooling="concat"``), and a small classifier (or one linear layer).
Only the blocks up to the deepest chosen layer are kept, so unused blocks cost nothing.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

from .emotion_cnn import EmotionCnnOutput, LogMelFrontend, member_cross_entropy

#: WhisperConfig fields the encoder needs; everything else (the decoder) is dropped.
ENCODER_CONFIG_KEYS = (
    "d_model",
    "encoder_layers",
    "encoder_attention_heads",
    "encoder_ffn_dim",
    "num_mel_bins",
    "max_source_positions",
    "activation_function",
    "activation_dropout",
    "attention_dropout",
    "dropout",
)


#: How the head combines the chosen states: a learned weighted sum, or side by side.
LAYER_POOLINGS = ("weighted", "concat")

#: Whisper-base's middle blocks: chosen by actor-fold cross-validation (model_card.md).
DEFAULT_LAYERS = (2, 3, 4)


class WhisperSerConfig(PretrainedConfig):
    model_type = "whisper_ser"
    keys_to_ignore_at_inference = ["member_logits"]

    def __init__(
        self,
        encoder_config: dict | None = None,
        layers: tuple[int, ...] = DEFAULT_LAYERS,
        head_hidden_size: int = 256,
        dropout: float = 0.2,
        ensemble_size: int = 1,
        input_rms: float = 0.1,
        encoder_source: str | None = None,
        trainable_encoder_layers: int = 0,
        encoder_storage_dtype: str = "float16",
        sampling_rate: int = 16_000,
        layer_pooling: str = "weighted",
        adapted_head: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        encoder_config = dict(encoder_config or {})
        if not encoder_config:
            # whisper-base's encoder: the architecture the bundled model uses.
            encoder_config = {"d_model": 512, "encoder_layers": 6, "encoder_attention_heads": 8, "encoder_ffn_dim": 2048}
        self.encoder_config = {key: value for key, value in WhisperConfig(**encoder_config).to_dict().items() if key in ENCODER_CONFIG_KEYS}
        layers = [int(layer) for layer in layers]
        depth = self.encoder_config["encoder_layers"]
        if not layers or min(layers) < 0 or max(layers) > depth:
            raise ValueError(f"layers must be hidden-state indices in 0..{depth} (0 = before the first block), got {layers}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must not repeat, got {layers}")
        self.layers = sorted(layers)
        if head_hidden_size < 0 or ensemble_size < 1 or not 0 <= dropout < 1 or input_rms <= 0:
            raise ValueError("need head_hidden_size >= 0, ensemble_size >= 1, 0 <= dropout < 1 and input_rms > 0")
        self.head_hidden_size = head_hidden_size
        self.dropout = dropout
        self.ensemble_size = ensemble_size
        # The feature extractor gives unit-variance clips; Whisper was trained on raw levels, where
        # speech sits around -20 dBFS. Its log-mel is relative to the clip's peak only below -80 dB.
        self.input_rms = input_rms
        self.encoder_source = encoder_source
        self.trainable_encoder_layers = trainable_encoder_layers
        if encoder_storage_dtype not in {"float16", "float32"}:
            raise ValueError(f"encoder_storage_dtype must be 'float16' or 'float32', got {encoder_storage_dtype!r}")
        # Whisper's published weights are float16: storing the encoder so loses nothing and halves
        # the checkpoint; the model is still built (and runs) in float32.
        self.encoder_storage_dtype = encoder_storage_dtype
        self.sampling_rate = sampling_rate
        # How the head combines the standardised states: "weighted", a learned softmax-weighted sum
        # (features = 2 * d_model); "concat", the states side by side (features = layers * 2 * d_model).
        if layer_pooling not in LAYER_POOLINGS:
            raise ValueError(f"layer_pooling must be one of {', '.join(LAYER_POOLINGS)}, got {layer_pooling!r}")
        self.layer_pooling = layer_pooling
        # A second head for answers standardised with other statistics than the training set's (a
        # speaker's, a corpus's, a recording's): fitted on training clips each standardised with its own
        # speaker's statistics, the distribution it then sees. A head fitted on the pooled statistics
        # answers worse there than on single clips (model_card.md).
        self.adapted_head = bool(adapted_head)

    @property
    def blocks_used(self) -> int:
        return max(self.layers)

    def whisper_encoder_config(self) -> WhisperConfig:
        return WhisperConfig(**{**self.encoder_config, "encoder_layers": self.blocks_used}, attn_implementation="eager")


class WhisperLogMel(nn.Module):
    """Whisper's log-mel, batched over clips of unequal length: ``(batch, samples)`` and lengths ->
    ``(batch, mels, frames)`` and the frame mask ``(batch, frames)``.

    As ``WhisperFeatureExtractor``: a centred 25 ms Hann STFT (reflect-padded), 10 ms hop, the last
    frame dropped, Slaney mel filters, log10, floored 8 below the clip's maximum, ``(x + 4) / 4``.
    The reflection at the end is taken per clip (a gather), and the maximum over its own frames,
    so padding never changes a clip's features.
    """

    N_FFT = 400
    HOP_LENGTH = 160

    def __init__(self, num_mel_bins: int, sampling_rate: int):
        super().__init__()
        # librosa's Slaney mel filters over 0-8 kHz are the ones OpenAI's Whisper was trained with.
        self.stft = LogMelFrontend(
            SimpleNamespace(
                n_fft=self.N_FFT, hop_length=self.HOP_LENGTH, sampling_rate=sampling_rate, num_mel_bins=num_mel_bins, fmin_hz=0.0, fmax_hz=sampling_rate / 2
            )
        )

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.N_FFT // 2
        samples = waveform.shape[-1]
        positions = torch.arange(-pad, samples + pad, device=waveform.device).abs()  # reflect about sample 0
        last = (lengths - 1).clamp(min=1).unsqueeze(1)
        positions = torch.where(positions > last, 2 * last - positions, positions).clamp(0, samples - 1)
        padded = torch.gather(waveform, 1, positions.expand(waveform.shape[0], -1))
        power = self.stft.power_spectrum(padded)[..., :-1]  # (batch, bins, samples // hop)
        log_mel = torch.log10(torch.matmul(self.stft.mel_filters, power).clamp(min=1e-10))
        frames = torch.arange(log_mel.shape[-1], device=waveform.device)
        frame_mask = (frames[None, :] < torch.div(lengths, self.HOP_LENGTH, rounding_mode="floor")[:, None]).to(log_mel.dtype)
        peak = log_mel.masked_fill(frame_mask.unsqueeze(1) == 0, -1e4).amax(dim=(1, 2), keepdim=True)
        log_mel = (torch.maximum(log_mel, peak - 8.0) + 4.0) / 4.0
        return log_mel * frame_mask.unsqueeze(1), frame_mask


class WhisperClipEncoder(nn.Module):
    """Whisper's encoder blocks without the 30 s input: ``(batch, mels, frames)`` -> every hidden state."""

    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.conv1 = nn.Conv1d(config.num_mel_bins, config.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.d_model, config.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, config.d_model)
        self.layers = nn.ModuleList(WhisperEncoderLayer(config) for _ in range(config.encoder_layers))
        self.max_source_positions = config.max_source_positions

    def forward(self, log_mel: torch.Tensor, frame_mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden states ``[after the convolutions + positions, after block 1, ...]``, each
        ``(batch, positions, d_model)``, and their mask ``(batch, positions)``."""
        hidden, mask = self.embed_frames(log_mel, frame_mask)
        return self.run_blocks(hidden, mask), mask

    def embed_frames(self, log_mel: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden state 0 (the convolutions + positions) and its position mask."""
        hidden = nn.functional.gelu(self.conv1(log_mel))
        # Zero the padded frames as the single clip's zero padding would be, before the strided conv.
        hidden = nn.functional.gelu(self.conv2(hidden * frame_mask.unsqueeze(1))).transpose(1, 2)
        positions = hidden.shape[1]
        if not torch.jit.is_tracing() and positions > self.max_source_positions:
            raise ValueError(
                f"Clip too long for the Whisper encoder: {positions} positions > {self.max_source_positions} (30 s); score it in windows."
            )
        # Frame pairs: a position is valid when its first frame is (ceil(frames / 2) per clip).
        mask = frame_mask[:, ::2]
        return hidden + self.embed_positions.weight[:positions].unsqueeze(0), mask

    def run_blocks(self, hidden: torch.Tensor, mask: torch.Tensor, first_block: int = 0, last_block: int | None = None) -> list[torch.Tensor]:
        """``[hidden, after block first_block + 1, ..., after block last_block]`` from hidden state
        ``first_block`` (its padded positions are masked out of every block's attention, whatever they hold)."""
        positions = hidden.shape[1]
        # Additive key-padding mask (batch, 1, queries, keys): no position attends to padding.
        attention_mask = (1.0 - mask)[:, None, None, :] * torch.finfo(hidden.dtype).min
        attention_mask = attention_mask.expand(-1, 1, positions, -1)
        states = [hidden]
        for layer in self.layers[first_block:last_block]:
            hidden = layer(hidden, attention_mask)
            states.append(hidden)
        return states


def masked_mean_std(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(batch, positions, dim)`` over the positions where ``mask`` is 1 -> ``(batch, 2 * dim)``."""
    weights = mask.unsqueeze(-1)
    count = weights.sum(dim=1).clamp(min=1.0)
    mean = (hidden * weights).sum(dim=1) / count
    variance = ((hidden - mean.unsqueeze(1)).square() * weights).sum(dim=1) / count
    return torch.cat([mean, torch.sqrt(variance + 1e-6)], dim=-1)


class EmbeddingHead(nn.Module):
    """Standardised per-layer embedding ``(batch, layers, features)`` -> learned layer weights (or the
    layers concatenated, ``pooling="concat"``) -> logits."""

    def __init__(self, layers: int, features: int, hidden_size: int, num_labels: int, dropout: float, pooling: str = "weighted"):
        super().__init__()
        self.pooling = pooling
        if pooling == "weighted":
            self.layer_logits = nn.Parameter(torch.zeros(layers))
        else:
            features = layers * features
        self.dropout = nn.Dropout(dropout)
        if hidden_size:
            self.classifier = nn.Sequential(nn.Linear(features, hidden_size), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_size, num_labels))
        else:
            self.classifier = nn.Linear(features, num_labels)

    def pool(self, standardised: torch.Tensor) -> torch.Tensor:
        """``(batch, layers, features)`` -> the classifier's input."""
        if self.pooling == "concat":
            return standardised.flatten(1)
        weights = torch.softmax(self.layer_logits, dim=0)
        return (standardised * weights[None, :, None]).sum(dim=1)

    def forward(self, standardised: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(standardised)))


class WhisperSerForAudioClassification(PreTrainedModel):
    config_class = WhisperSerConfig
    base_model_prefix = "whisper_ser"
    main_input_name = "input_values"

    def __init__(self, config: WhisperSerConfig):
        super().__init__(config)
        encoder_config = config.whisper_encoder_config()
        self.log_mel = WhisperLogMel(encoder_config.num_mel_bins, config.sampling_rate)
        self.encoder = WhisperClipEncoder(encoder_config)
        features = 2 * encoder_config.d_model
        # The training set's statistics of the utterance embedding (set by train.py before training).
        self.register_buffer("embedding_mean", torch.zeros(len(config.layers), features))
        self.register_buffer("embedding_var", torch.ones(len(config.layers), features))
        self.heads = nn.ModuleList(
            EmbeddingHead(len(config.layers), features, config.head_hidden_size, config.num_labels, config.dropout, config.layer_pooling)
            for _ in range(config.ensemble_size)
        )
        self.adapted_heads = (
            nn.ModuleList(
                EmbeddingHead(len(config.layers), features, config.head_hidden_size, config.num_labels, config.dropout, config.layer_pooling)
                for _ in range(config.ensemble_size)
            )
            if config.adapted_head
            else None
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only the head is ever freshly initialised: the encoder comes from a checkpoint.
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, EmbeddingHead) and hasattr(module, "layer_logits"):
            nn.init.zeros_(module.layer_logits)

    # -- the three steps, each usable alone ------------------------------------------------------
    def embed(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The utterance embedding: mean and std of each chosen hidden state, ``(batch, layers, 2 * d_model)``."""
        return self.pooled_states(input_values, attention_mask, self.config.layers)

    def pooled_states(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None, states: list[int]) -> torch.Tensor:
        """Mean and std of the hidden states ``states`` (0 = before the first block), ``(batch, len(states), 2 * d_model)``."""
        if attention_mask is None:
            lengths = torch.full((input_values.shape[0],), input_values.shape[-1], device=input_values.device)
            attention_mask = torch.ones_like(input_values)
        else:
            lengths = attention_mask.sum(dim=-1)
        waveform = input_values * self.config.input_rms * attention_mask.to(input_values.dtype)
        log_mel, frame_mask = self.log_mel(waveform, lengths)
        hidden_states, mask = self.encoder(log_mel, frame_mask)
        return torch.stack([masked_mean_std(hidden_states[index], mask) for index in states], dim=1)

    def hidden_state(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None, state: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden state ``state`` (0 = before the first block) ``(batch, positions, d_model)`` and its
        position mask: what partial fine-tuning caches below the blocks it trains."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_values)
        lengths = attention_mask.sum(dim=-1)
        log_mel, frame_mask = self.log_mel(input_values * self.config.input_rms * attention_mask.to(input_values.dtype), lengths)
        hidden, mask = self.encoder.embed_frames(log_mel, frame_mask)
        return self.encoder.run_blocks(hidden, mask, last_block=state)[-1], mask

    def embed_from_state(self, hidden: torch.Tensor, mask: torch.Tensor, state: int) -> torch.Tensor:
        """The utterance embedding ``(batch, layers, 2 * d_model)`` from hidden state ``state`` (every
        chosen layer must be at or above it): only the blocks above it run."""
        if min(self.config.layers) < state:
            raise ValueError(f"hidden state {state} is above the chosen layers {self.config.layers}: they cannot be computed from it.")
        states = self.encoder.run_blocks(hidden, mask, first_block=state)
        return torch.stack([masked_mean_std(states[layer - state], mask) for layer in self.config.layers], dim=1)

    def classify_embedding(
        self, embedding: torch.Tensor, mean: torch.Tensor | None = None, var: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, member logits ``(batch, members, labels)``) from an embedding, standardised with
        ``mean``/``var`` (default: the training set's). Other statistics than the training set's go
        to the adapted heads where the model has them (``config.adapted_head``)."""
        heads = self.heads_for(adapted=mean is not None)
        mean = self.embedding_mean if mean is None else mean
        var = self.embedding_var if var is None else var
        standardised = (embedding - mean) / torch.sqrt(var + 1e-5)
        stacked = torch.stack([head(standardised) for head in heads], dim=1)
        if len(heads) == 1:
            return stacked[:, 0], stacked
        logits = torch.logsumexp(torch.log_softmax(stacked, dim=-1), dim=1) - math.log(len(heads))
        return logits, stacked

    def heads_for(self, adapted: bool) -> nn.ModuleList:
        """The heads that answer an embedding standardised with the training statistics
        (``adapted=False``) or with a speaker's / corpus's / recording's own (``adapted=True``)."""
        return self.adapted_heads if adapted and self.adapted_heads is not None else self.heads

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        embedding: torch.Tensor | None = None,
        statistics_mean: torch.Tensor | None = None,
        statistics_var: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> EmotionCnnOutput:
        """Raw ``input_values`` (and ``attention_mask``), or a precomputed ``embedding`` (train.py's cache).
        ``statistics_mean`` / ``statistics_var`` (broadcast against the embedding, e.g. one speaker's per
        clip) replace the training statistics in the standardisation."""
        if embedding is None:
            if input_values is None:
                raise ValueError("Give input_values (raw 16 kHz audio) or a precomputed embedding.")
            embedding = self.embed(input_values, attention_mask)
        logits, member_logits = self.classify_embedding(embedding, statistics_mean, statistics_var)
        loss = member_cross_entropy(member_logits, labels) if labels is not None else None
        return EmotionCnnOutput(loss=loss, logits=logits, member_logits=member_logits)

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        state_dict = dict(self.state_dict() if state_dict is None else state_dict)
        if self.config.encoder_storage_dtype == "float16":
            for name, tensor in state_dict.items():
                if name.startswith("encoder.") and tensor.is_floating_point():
                    state_dict[name] = tensor.to(torch.float16)
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    # -- building from a pretrained Whisper -----------------------------------------------------
    def freeze_encoder(self, trainable_layers: int = 0) -> None:
        """Freeze the encoder except its top ``trainable_layers`` blocks (-1: nothing frozen)."""
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(trainable_layers < 0)
        if trainable_layers > 0:
            for layer in self.encoder.layers[-trainable_layers:]:
                for parameter in layer.parameters():
                    parameter.requires_grad_(True)

    @property
    def encoder_is_frozen(self) -> bool:
        return not any(parameter.requires_grad for parameter in self.encoder.parameters())


def encoder_state_dict_from_whisper(state_dict: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """``WhisperModel`` / ``WhisperForConditionalGeneration`` / ``WhisperForAudioClassification``
    weights -> this model's ``encoder.*`` weights, keeping blocks ``0..blocks-1``."""
    out = {}
    for name, tensor in state_dict.items():
        for prefix in ("model.encoder.", "encoder."):
            if name.startswith(prefix):
                rest = name[len(prefix) :]
                if rest.startswith("layers."):
                    if int(rest.split(".")[1]) >= blocks:
                        break
                elif rest.startswith("layer_norm."):
                    break  # the final layer norm follows the last block, which the head never reads
                out[f"encoder.{rest}"] = tensor
                break
    return out


def from_whisper_checkpoint(
    name_or_path: str, id2label: dict[int, str], overrides: str | None = None, **hub_kwargs
) -> WhisperSerForAudioClassification:
    """This model on the encoder of a Whisper checkpoint (a hub id such as ``openai/whisper-base``, or
    a folder written by ``python -m scripts.import_whisper``), with a fresh head for ``id2label``.
    ``overrides`` sets WhisperSerConfig attributes (``"layers=[2,3,4],head_hidden_size=0"``)."""
    from transformers import AutoModel

    from .presets import apply_config_overrides

    whisper = AutoModel.from_pretrained(name_or_path, **hub_kwargs)
    depth = whisper.config.encoder_layers
    config = WhisperSerConfig(
        encoder_config=whisper.config.to_dict(),
        layers=[layer for layer in DEFAULT_LAYERS if layer <= depth] or [depth],
        encoder_source=name_or_path,
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
    )
    if overrides:
        apply_config_overrides(config, overrides)
        config = WhisperSerConfig(**config.to_dict())
    model = WhisperSerForAudioClassification(config)
    weights = encoder_state_dict_from_whisper(whisper.state_dict(), config.blocks_used)
    del whisper
    result = model.load_state_dict(weights, strict=False)
    missing = [name for name in result.missing_keys if name.startswith("encoder.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{name_or_path} does not fit a Whisper encoder: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model
