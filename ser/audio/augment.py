"""Waveform augmentation for training, on audiomentations (pinned in requirements.txt).

Two uses:

- **Random**, for models trained on waveforms (:func:`augment_waveform` with an :class:`AugmentConfig`):
  speed, pitch, gain and coloured noise, each with its own probability.
- **Fixed copies**, for a frozen (or partly frozen) encoder whose outputs are cached once per copy
  (:func:`fixed_copy`, named by :func:`parse_fixed_copies`): one transform with one value, the same
  every time for a given clip (its seed comes from the clip's path), so a cache entry never goes stale.

audiomentations draws from numpy's and Python's global generators; :func:`seeded` sets them from the
caller's seed for one call and puts them back, so the caller's ``numpy.random.Generator`` (or the clip's
seed) alone decides the result. The low-bitrate codec (Opus, what a browser microphone sends over
WebRTC) is an ffmpeg round trip, which audiomentations does not have.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from audiomentations import AddColorNoise, AddGaussianSNR, Gain, PitchShift, TimeStretch

from ser.audio.loader import resample


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """numpy's and Python's global generators seeded with ``seed`` inside the block, restored after it."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def _apply(transform, waveform: np.ndarray, sample_rate: int, seed: int) -> np.ndarray:
    with seeded(seed):
        return np.asarray(transform(samples=np.asarray(waveform, dtype=np.float32), sample_rate=sample_rate), dtype=np.float32)


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**32))


def add_noise(waveform: np.ndarray, rng: np.random.Generator, snr_db_range: tuple[float, float], sample_rate: int = 16_000) -> np.ndarray:
    """White noise at an SNR drawn uniformly from ``snr_db_range`` (relative to the clip's power)."""
    if not np.any(waveform):
        return np.asarray(waveform, dtype=np.float32).copy()
    return _apply(AddGaussianSNR(min_snr_db=snr_db_range[0], max_snr_db=snr_db_range[1], p=1.0), waveform, sample_rate, _seed(rng))


def add_color_noise(waveform: np.ndarray, rng: np.random.Generator, snr_db_range: tuple[float, float], sample_rate: int) -> np.ndarray:
    """Coloured noise (spectral slope from -6 dB/octave, brown, to +6, blue) at an SNR drawn from ``snr_db_range``."""
    if not np.any(waveform):
        return np.asarray(waveform, dtype=np.float32).copy()
    return _apply(AddColorNoise(min_snr_db=snr_db_range[0], max_snr_db=snr_db_range[1], p=1.0), waveform, sample_rate, _seed(rng))


def apply_gain(waveform: np.ndarray, rng: np.random.Generator, max_gain_db: float, sample_rate: int = 16_000) -> np.ndarray:
    """Scale by a gain drawn uniformly from ``[-max_gain_db, +max_gain_db]``, clipped to [-1, 1]."""
    gained = _apply(Gain(min_gain_db=-max_gain_db, max_gain_db=max_gain_db, p=1.0), waveform, sample_rate, _seed(rng))
    return np.clip(gained, -1.0, 1.0)


def shift_pitch(waveform: np.ndarray, rng: np.random.Generator, semitones_range: tuple[float, float], sample_rate: int) -> np.ndarray:
    """Pitch shifted by a number of semitones drawn from ``semitones_range``, tempo kept (signalsmith stretch)."""
    low, high = semitones_range
    return _apply(PitchShift(min_semitones=low, max_semitones=high, p=1.0), waveform, sample_rate, _seed(rng))


def stretch_tempo(waveform: np.ndarray, rng: np.random.Generator, rate_range: tuple[float, float], sample_rate: int) -> np.ndarray:
    """Played ``rate`` times as fast (drawn from ``rate_range``), pitch kept; the length changes with it."""
    low, high = rate_range
    transform = TimeStretch(min_rate=low, max_rate=high, leave_length_unchanged=False, p=1.0)
    return _apply(transform, waveform, sample_rate, _seed(rng))


def speed_perturb(waveform: np.ndarray, rng: np.random.Generator, factors: Sequence[float], sample_rate: int) -> np.ndarray:
    """Play faster/slower by a factor drawn from ``factors`` (changes pitch too, like Kaldi's speed perturbation)."""
    factor = float(rng.choice(np.asarray(factors, dtype=np.float64)))
    if factor == 1.0:
        return np.asarray(waveform, dtype=np.float32).copy()
    # Treating the clip as if recorded at sample_rate * factor and resampling back shortens it by 1/factor.
    return resample(waveform, round(sample_rate * factor), sample_rate)


class CodecError(RuntimeError):
    """The codec round trip could not run (no ffmpeg, or ffmpeg failed)."""


def opus_round_trip(waveform: np.ndarray, sample_rate: int, bitrate_kbps: float) -> np.ndarray:
    """``waveform`` encoded to Opus at ``bitrate_kbps`` (VoIP mode, as a browser sends speech) and decoded
    back, same rate and length (Opus's 6.5 ms encoder delay removed by ffmpeg)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise CodecError("The opus_kbps copy needs ffmpeg (apt-get install ffmpeg).")
    raw = np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0).tobytes()
    pcm = ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1"]
    encode = [ffmpeg, "-nostdin", "-v", "error", *pcm, "-i", "pipe:0", "-c:a", "libopus", "-b:a", f"{bitrate_kbps:g}k",
              "-application", "voip", "-f", "ogg", "pipe:1"]  # fmt: skip
    decode = [ffmpeg, "-nostdin", "-v", "error", "-i", "pipe:0", *pcm, "pipe:1"]
    encoded = subprocess.run(encode, input=raw, capture_output=True)
    if encoded.returncode != 0:
        raise CodecError(f"ffmpeg could not encode Opus: {encoded.stderr.decode(errors='replace').strip()[-200:]}")
    decoded = subprocess.run(decode, input=encoded.stdout, capture_output=True)
    if decoded.returncode != 0:
        raise CodecError(f"ffmpeg could not decode Opus: {decoded.stderr.decode(errors='replace').strip()[-200:]}")
    samples = np.frombuffer(decoded.stdout, dtype=np.float32)
    out = np.zeros(len(waveform), dtype=np.float32)
    out[: min(len(out), len(samples))] = samples[: len(out)]
    return out


@dataclass(frozen=True)
class AugmentConfig:
    noise_prob: float = 0.3
    noise_snr_db_range: tuple[float, float] = (15.0, 35.0)
    gain_prob: float = 0.5
    max_gain_db: float = 6.0
    speed_prob: float = 0.0
    speed_factors: tuple[float, ...] = (0.9, 1.1)
    pitch_prob: float = 0.0
    max_pitch_semitones: float = 2.0

    @property
    def enabled(self) -> bool:
        return self.noise_prob > 0 or self.gain_prob > 0 or self.speed_prob > 0 or self.pitch_prob > 0


def augment_waveform(waveform: np.ndarray, rng: np.random.Generator, config: AugmentConfig, sample_rate: int) -> np.ndarray:
    """Speed (changes length, so first), pitch, gain, then coloured noise, each with its own probability."""
    if config.speed_prob > 0 and rng.random() < config.speed_prob:
        waveform = speed_perturb(waveform, rng, config.speed_factors, sample_rate)
    if config.pitch_prob > 0 and rng.random() < config.pitch_prob:
        waveform = shift_pitch(waveform, rng, (-config.max_pitch_semitones, config.max_pitch_semitones), sample_rate)
    if config.gain_prob > 0 and rng.random() < config.gain_prob:
        waveform = apply_gain(waveform, rng, config.max_gain_db, sample_rate)
    if config.noise_prob > 0 and rng.random() < config.noise_prob:
        waveform = add_color_noise(waveform, rng, config.noise_snr_db_range, sample_rate)
    return waveform


#: Fixed (deterministic) copies of a training clip, for models whose frozen encoder output is cached
#: once per copy, each ``kind=value``: ``speed`` (factor: tempo, pitch and formants together), ``tempo``
#: (rate, pitch kept), ``pitch`` (semitones, tempo kept), ``gain_db``, ``noise_snr_db`` (white noise),
#: ``color_noise_snr_db`` (coloured noise) and ``opus_kbps`` (an Opus round trip at that bitrate).
FIXED_COPY_RANGES: dict[str, tuple[float, float]] = {
    "speed": (0.5, 2.0),
    "tempo": (0.5, 2.0),
    "pitch": (-12.0, 12.0),
    "gain_db": (-40.0, 40.0),
    "noise_snr_db": (-20.0, 80.0),
    "color_noise_snr_db": (-20.0, 80.0),
    "opus_kbps": (6.0, 510.0),
}
FIXED_COPY_KINDS = tuple(FIXED_COPY_RANGES)


def parse_fixed_copies(spec: str | None) -> list[str]:
    """``"pitch=-2,opus_kbps=16"`` -> ``["pitch=-2", "opus_kbps=16"]``, each checked against :data:`FIXED_COPY_RANGES`."""
    copies = []
    for item in (part.strip() for part in (spec or "").split(",")):
        if not item:
            continue
        kind, separator, raw = item.partition("=")
        try:
            value = float(raw)
        except ValueError:
            value = None
        low, high = FIXED_COPY_RANGES.get(kind, (0.0, 0.0))
        if not separator or kind not in FIXED_COPY_RANGES or value is None or not low <= value <= high:
            accepted = ", ".join(f"{name}=<{a:g}..{b:g}>" for name, (a, b) in FIXED_COPY_RANGES.items())
            raise ValueError(f"Bad fixed copy {item!r}: expected one of {accepted}, comma-separated (e.g. 'pitch=-2,pitch=2,opus_kbps=16').")
        copies.append(f"{kind}={value:g}")
    return copies


def fixed_copy(waveform: np.ndarray, copy: str, sample_rate: int, seed: int) -> np.ndarray:
    """The copy of ``waveform`` that ``copy`` names (see :func:`parse_fixed_copies`); ``seed`` fixes its noise."""
    kind, _, raw = copy.partition("=")
    value = float(raw)
    rng = np.random.default_rng(seed)
    if kind == "speed":
        return speed_perturb(waveform, rng, (value,), sample_rate)
    if kind == "tempo":
        return stretch_tempo(waveform, rng, (value, value), sample_rate)
    if kind == "pitch":
        return shift_pitch(waveform, rng, (value, value), sample_rate)
    if kind == "gain_db":
        return np.clip(np.asarray(waveform, dtype=np.float32) * np.float32(10.0 ** (value / 20.0)), -1.0, 1.0)
    if kind == "noise_snr_db":
        return add_noise(waveform, rng, (value, value), sample_rate)
    if kind == "color_noise_snr_db":
        return add_color_noise(waveform, rng, (value, value), sample_rate)
    if kind == "opus_kbps":
        return opus_round_trip(waveform, sample_rate, value)
    raise ValueError(f"Unknown fixed copy {copy!r}")
