"""Light waveform augmentation for training: additive noise, gain, optional speed perturbation.

Each function takes a mono float32 waveform and a ``numpy.random.Generator`` and returns a new
array, so the caller controls reproducibility. Only the training split is augmented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ser.audio.loader import resample


def add_noise(waveform: np.ndarray, rng: np.random.Generator, snr_db_range: tuple[float, float]) -> np.ndarray:
    """White noise at an SNR drawn uniformly from ``snr_db_range`` (relative to the clip's power)."""
    signal_power = float(np.mean(np.square(waveform, dtype=np.float64)))
    if signal_power <= 0.0:
        return waveform.copy()
    snr_db = rng.uniform(*snr_db_range)
    noise_std = np.sqrt(signal_power / (10.0 ** (snr_db / 10.0)))
    return (waveform + rng.normal(0.0, noise_std, waveform.shape)).astype(np.float32)


def apply_gain(waveform: np.ndarray, rng: np.random.Generator, max_gain_db: float) -> np.ndarray:
    """Scale by a gain drawn uniformly from ``[-max_gain_db, +max_gain_db]``, clipped to [-1, 1]."""
    gain = 10.0 ** (rng.uniform(-max_gain_db, max_gain_db) / 20.0)
    return np.clip(waveform * gain, -1.0, 1.0).astype(np.float32)


def speed_perturb(waveform: np.ndarray, rng: np.random.Generator, factors: Sequence[float], sample_rate: int) -> np.ndarray:
    """Play faster/slower by a factor drawn from ``factors`` (changes pitch too, like Kaldi's speed perturbation)."""
    factor = float(rng.choice(np.asarray(factors, dtype=np.float64)))
    if factor == 1.0:
        return waveform.copy()
    # Treating the clip as if recorded at sample_rate * factor and resampling back shortens it by 1/factor.
    return resample(waveform, round(sample_rate * factor), sample_rate)


@dataclass(frozen=True)
class AugmentConfig:
    noise_prob: float = 0.3
    noise_snr_db_range: tuple[float, float] = (15.0, 35.0)
    gain_prob: float = 0.5
    max_gain_db: float = 6.0
    speed_prob: float = 0.0
    speed_factors: tuple[float, ...] = (0.9, 1.1)

    @property
    def enabled(self) -> bool:
        return self.noise_prob > 0 or self.gain_prob > 0 or self.speed_prob > 0


def augment_waveform(waveform: np.ndarray, rng: np.random.Generator, config: AugmentConfig, sample_rate: int) -> np.ndarray:
    """Speed (changes length, so first), then gain, then noise — each with its own probability."""
    if config.speed_prob > 0 and rng.random() < config.speed_prob:
        waveform = speed_perturb(waveform, rng, config.speed_factors, sample_rate)
    if config.gain_prob > 0 and rng.random() < config.gain_prob:
        waveform = apply_gain(waveform, rng, config.max_gain_db)
    if config.noise_prob > 0 and rng.random() < config.noise_prob:
        waveform = add_noise(waveform, rng, config.noise_snr_db_range)
    return waveform


#: Fixed (deterministic) copies of a training clip, for models whose frozen encoder output is cached
#: once per copy: ``speed=<factor>`` (tempo, pitch and formants together) or ``noise_snr_db=<dB>``.
FIXED_COPY_KINDS = ("speed", "noise_snr_db")


def parse_fixed_copies(spec: str | None) -> list[str]:
    """``"speed=0.88,speed=1.12"`` -> ``["speed=0.88", "speed=1.12"]``, each checked."""
    copies = []
    for item in (part.strip() for part in (spec or "").split(",")):
        if not item:
            continue
        kind, separator, raw = item.partition("=")
        try:
            value = float(raw)
        except ValueError:
            value = None
        if not separator or kind not in FIXED_COPY_KINDS or value is None or (kind == "speed" and not 0.5 <= value <= 2.0):
            raise ValueError(
                f"Bad fixed copy {item!r}: expected speed=<factor in 0.5..2> or noise_snr_db=<dB>, comma-separated "
                "(e.g. 'speed=0.88,speed=1.12,noise_snr_db=20')."
            )
        copies.append(f"{kind}={value:g}")
    return copies


def fixed_copy(waveform: np.ndarray, copy: str, sample_rate: int, seed: int) -> np.ndarray:
    """The copy of ``waveform`` that ``copy`` names (see :func:`parse_fixed_copies`); ``seed`` fixes its noise."""
    kind, _, raw = copy.partition("=")
    value = float(raw)
    if kind == "speed":
        return speed_perturb(waveform, np.random.default_rng(seed), (value,), sample_rate)
    if kind == "noise_snr_db":
        return add_noise(waveform, np.random.default_rng(seed), (value, value))
    raise ValueError(f"Unknown fixed copy {copy!r}")
