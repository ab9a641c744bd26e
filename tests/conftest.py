"""Shared offline fixtures: tiny random models and generated corpora in the real layouts."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_RATE = 16_000

# Audio Emotions folder name -> RAVDESS emotion code, and the AESDD folder -> file letter.
AUDIO_EMOTIONS_CLASSES = {"Angry": "05", "Disgusted": "07", "Fearful": "06", "Happy": "03", "Neutral": "01", "Sad": "04", "Surprised": "08"}
AESDD_CLASSES = {"anger": "a", "disgust": "d", "fear": "f", "happiness": "h", "sadness": "s"}

requires_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")


def synth_clip(class_index: int, seed: int, duration_s: float = 1.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A voiced-sounding tone whose pitch depends on the class, plus noise: learnable by a tiny model."""
    rng = np.random.default_rng(seed)
    time = np.arange(int(duration_s * sample_rate)) / sample_rate
    pitch_hz = 110.0 * (1.25 ** class_index) * (1.0 + 0.03 * rng.standard_normal())
    tone = sum(np.sin(2 * np.pi * pitch_hz * harmonic * time) / harmonic for harmonic in range(1, 5))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * np.minimum(time / duration_s, 1.0)))
    return (0.2 * tone * envelope + 0.01 * rng.standard_normal(time.size)).astype(np.float32)


def write_clip(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, sample_rate)
    return path


@pytest.fixture(scope="session")
def audio_emotions_dir(tmp_path_factory) -> Path:
    """``<tmp>/Emotions/<Class>/`` with RAVDESS (actors 1-6), CREMA-D, TESS and bare SAVEE names."""
    root = tmp_path_factory.mktemp("audio_emotions")
    seed = 0
    for class_index, (folder, code) in enumerate(AUDIO_EMOTIONS_CLASSES.items()):
        for actor in range(1, 7):
            for statement in (1, 2):
                seed += 1
                name = f"03-01-{code}-01-0{statement}-01-{actor:02d}.wav"
                write_clip(root / "Emotions" / folder / name, synth_clip(class_index, seed))
        crema_code = folder[:3].upper()
        for speaker in (1001, 1002):
            seed += 1
            write_clip(root / "Emotions" / folder / f"{speaker}_IEO_{crema_code}_HI.wav", synth_clip(class_index, seed))
        for prefix in ("OAF", "YAF"):
            seed += 1
            write_clip(root / "Emotions" / folder / f"{prefix}_back_{folder.lower()}.wav", synth_clip(class_index, seed))
        seed += 1
        savee_letter = {"Sad": "sa", "Surprised": "su"}.get(folder, folder[0].lower())
        write_clip(root / "Emotions" / folder / f"{savee_letter}01.wav", synth_clip(class_index, seed))
    return root


@pytest.fixture(scope="session")
def aesdd_dir(tmp_path_factory) -> Path:
    """AESDD layout: ``anger/a01 (1).wav`` ... for 3 actors, 2 utterances each."""
    root = tmp_path_factory.mktemp("aesdd")
    class_order = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 5}
    seed = 1000
    for folder, letter in AESDD_CLASSES.items():
        for actor in (1, 2, 3):
            for utterance in (1, 2):
                seed += 1
                write_clip(root / folder / f"{letter}{utterance:02d} ({actor}).wav", synth_clip(class_order[folder], seed))
    return root


def _save_tiny(config, directory: Path) -> Path:
    import torch
    from transformers import AutoModelForAudioClassification

    from ser.core.labels import DEFAULT_LABELS, label_maps
    from ser.models.presets import feature_extractor_for

    config.id2label, config.label2id = label_maps(DEFAULT_LABELS)
    # Seeded: otherwise the weights depend on which tests ran first, and so may a near-tie.
    torch.manual_seed(0)
    model = AutoModelForAudioClassification.from_config(config)
    model.save_pretrained(directory)
    feature_extractor_for(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_wav2vec2_dir(tmp_path_factory) -> Path:
    """A randomly initialised wav2vec2 (group norm, like wav2vec2-base) with the six labels."""
    from transformers import Wav2Vec2Config

    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=16,
    )
    return _save_tiny(config, tmp_path_factory.mktemp("tiny_wav2vec2"))


@pytest.fixture(scope="session")
def tiny_cnn_dir(tmp_path_factory) -> Path:
    """A randomly initialised EmotionCnn (the bundled model's architecture), a few thousand weights."""
    from ser.models import EmotionCnnConfig

    return _save_tiny(EmotionCnnConfig(channels=(8, 16)), tmp_path_factory.mktemp("tiny_cnn"))


@pytest.fixture(scope="session")
def espeak_speech(tmp_path_factory):
    """``make(text) -> (samples, sample_rate)``: real synthetic speech from espeak-ng (22.05 kHz, float32)."""
    import shutil
    import subprocess

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    directory = tmp_path_factory.mktemp("espeak")

    def make(text: str) -> tuple[np.ndarray, int]:
        path = directory / f"{abs(hash(text))}.wav"
        if not path.exists():
            subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True)
        samples, sample_rate = soundfile.read(str(path), dtype="float32")
        return samples, sample_rate

    return make


@pytest.fixture(scope="session")
def tiny_tdnn_dir(tmp_path_factory) -> Path:
    """The bundled model's architecture (``emotion-tdnn-ensemble``: TDNN + utterance spectrum, an
    ensemble in one checkpoint), narrowed."""
    from ser.models.presets import config_from_spec

    config = config_from_spec("emotion-tdnn-ensemble")
    config.channels = [16, 16]
    config.ensemble_size = 2
    return _save_tiny(config, tmp_path_factory.mktemp("tiny_tdnn"))


@pytest.fixture(scope="session")
def tiny_pitch_tdnn_dir(tmp_path_factory) -> Path:
    """``tiny_tdnn_dir`` with the pitch channels on (argmax and gather in the graph)."""
    from ser.models.presets import config_from_spec

    config = config_from_spec("emotion-tdnn-ensemble")
    config.channels = [16, 16]
    config.ensemble_size = 2
    config.pitch_features = True
    return _save_tiny(config, tmp_path_factory.mktemp("tiny_pitch_tdnn"))


TINY_WHISPER_CONFIG = dict(
    vocab_size=120,
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    num_mel_bins=80,
    max_source_positions=1500,
    max_target_positions=32,
    pad_token_id=119,
    bos_token_id=119,
    eos_token_id=119,
    decoder_start_token_id=118,
)


@pytest.fixture(scope="session")
def tiny_whisper_checkpoint_dir(tmp_path_factory) -> Path:
    """A randomly initialised ``WhisperForConditionalGeneration`` folder (what ``openai/whisper-base``
    or ``scripts.import_whisper`` provide), a few thousand weights."""
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    directory = tmp_path_factory.mktemp("tiny_whisper")
    torch.manual_seed(0)
    WhisperForConditionalGeneration(WhisperConfig(**TINY_WHISPER_CONFIG)).save_pretrained(directory)
    WhisperFeatureExtractor().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_whisper_ser_dir(tiny_whisper_checkpoint_dir, tmp_path_factory) -> Path:
    """The bundled model's architecture (WhisperSer: a Whisper encoder on the clip's own length, an
    ensemble of heads), on the tiny checkpoint, with made-up training statistics."""
    import torch

    from ser.core.labels import DEFAULT_LABELS, label_maps
    from ser.models.presets import feature_extractor_for
    from ser.models.whisper_ser import from_whisper_checkpoint

    torch.manual_seed(0)
    model = from_whisper_checkpoint(str(tiny_whisper_checkpoint_dir), label_maps(DEFAULT_LABELS)[0], "layers=[1,2],ensemble_size=2,head_hidden_size=8")
    model.embedding_mean.normal_(0.0, 0.1)
    model.embedding_var.uniform_(0.5, 2.0)
    directory = tmp_path_factory.mktemp("tiny_whisper_ser")
    model.save_pretrained(directory)
    feature_extractor_for(model.config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_whisper_classifier(tiny_whisper_ser_dir):
    """The tiny Whisper model loaded once, on the fp32 reference backend."""
    from ser.inference.predictor import EmotionClassifier

    return EmotionClassifier.from_pretrained(tiny_whisper_ser_dir, backend="torch")


@pytest.fixture(scope="module")
def ungated_server_url(tiny_cnn_dir, tmp_path_factory):
    """``python app.py`` on the tiny CNN with the quality gate off and threshold 0 (every clip gets a
    label), one server per test module."""
    from live_server import UNGATED_ARGS, running_app

    with running_app(tiny_cnn_dir, tmp_path_factory.mktemp("server") / "app.log", UNGATED_ARGS) as url:
        yield url
