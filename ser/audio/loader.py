"""One audio loader for training, evaluation and serving: any file -> mono float32 at the model's rate.

soundfile (libsndfile) decodes wav/flac/ogg/mp3 in-process; anything else (webm, m4a, ...) goes
through the ``ffmpeg`` binary, which also resamples and downmixes on the way out. No torchcodec,
no torchaudio.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr

logger = logging.getLogger(__name__)

#: The rate every model in this project consumes (wav2vec2 and the bundled model alike).
TARGET_SAMPLE_RATE = 16_000

ACCEPTED_FORMATS = "wav, flac, mp3, ogg, webm, m4a (anything ffmpeg decodes)"


class AudioError(ValueError):
    """Audio that cannot be used; the message says what was wrong and what is accepted."""


class AudioDecodeError(AudioError):
    """The file could not be decoded as audio."""


class EmptyAudioError(AudioError):
    """The audio holds no samples."""


class InvalidSamplesError(AudioError):
    """The samples are not finite numbers (NaN or Inf)."""


class AudioTooLongError(AudioError):
    """The audio is longer than the caller allows."""


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels; accepts ``(n,)`` or ``(n, channels)``."""
    if samples.ndim == 1:
        return samples
    if samples.ndim == 2:
        return samples.mean(axis=1)
    raise AudioError(f"Expected 1-D or (samples, channels) audio, got shape {samples.shape}.")


def to_float32(samples: np.ndarray) -> np.ndarray:
    """Integer PCM (as Gradio's microphone delivers) -> float32 in [-1, 1]; floats pass through."""
    if np.issubdtype(samples.dtype, np.integer):
        scale = float(np.iinfo(samples.dtype).max) + 1.0
        return (samples.astype(np.float32) / scale).astype(np.float32)
    return samples.astype(np.float32, copy=False)


def resample(samples: np.ndarray, orig_sample_rate: int, target_sample_rate: int) -> np.ndarray:
    """High-quality resampling (soxr); a no-op when the rates already match."""
    if orig_sample_rate == target_sample_rate or samples.size == 0:
        return samples
    return soxr.resample(samples, orig_sample_rate, target_sample_rate, quality="HQ").astype(np.float32, copy=False)


#: The DC blocker's corner frequency: far below speech (and the bundled model's 50 Hz mel floor), so
#: it only takes out the offset and drifts slower than a fifth of a second.
DC_CUTOFF_HZ = 5.0


class DcBlocker:
    """Removes a DC offset: a one-pole high-pass, ``y[n] = x[n] - x[n-1] + r * y[n-1]``.

    A constant offset (a cheap microphone, a clip scaled and shifted by an editor) is not sound, but
    it moves every frame's level and the VAD's input: speech at 0.3x plus 0.6 was refused as "no
    speech". Every loader path (:func:`prepare_waveform`, hence :func:`load_audio`, and
    :func:`iter_audio_blocks`) runs the mono signal through one of these before resampling, so the
    quality gate and the model always see the centred signal. It keeps its state between calls, so a stream of blocks
    comes out exactly as the whole clip would. The first sample seeds it, so an offset present from
    the start is gone from the first sample rather than decaying away.
    """

    def __init__(self, sample_rate: int, cutoff_hz: float = DC_CUTOFF_HZ):
        self.pole = float(np.exp(-2.0 * np.pi * cutoff_hz / sample_rate))
        self._state: np.ndarray | None = None

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        from scipy.signal import lfilter

        if samples.size == 0:
            return samples.astype(np.float32, copy=False)
        values = samples.astype(np.float64)
        if self._state is None:
            # lfilter's transposed state for "previous input = first sample, previous output = 0".
            self._state = np.array([-values[0]])
        filtered, self._state = lfilter([1.0, -1.0], [1.0, -self.pole], values, zi=self._state)
        return filtered.astype(np.float32)


class StreamingResampler:
    """A live stream's slices (any integer or float dtype, mono or ``(n, channels)``, at ``source_rate``)
    -> mono float32 at ``target_rate``, DC offset removed, as :func:`prepare_waveform` does for a
    whole clip. The DC blocker and the resampler (soxr's streaming one) keep their state between
    slices, so the slices' edges leave no clicks or gaps: the concatenated output equals the whole
    clip's up to the resampler's delay of a few milliseconds, which :meth:`flush` returns at the end.
    """

    def __init__(self, source_rate: int, target_rate: int = TARGET_SAMPLE_RATE):
        if source_rate <= 0:
            raise AudioError(f"Invalid sample rate {source_rate} Hz.")
        self.source_rate = int(source_rate)
        self.target_rate = int(target_rate)
        self._dc_blocker = DcBlocker(self.source_rate)
        self._stream = (
            None
            if self.source_rate == self.target_rate
            else soxr.ResampleStream(self.source_rate, self.target_rate, 1, dtype="float32", quality="HQ")
        )

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        mono = to_mono(to_float32(np.asarray(samples)))
        if not np.all(np.isfinite(mono)):
            raise InvalidSamplesError("The audio contains NaN or infinite sample values; send PCM or float audio in [-1, 1].")
        centred = self._dc_blocker(mono)
        if self._stream is None:
            return np.ascontiguousarray(centred, dtype=np.float32)
        return self._stream.resample_chunk(np.ascontiguousarray(centred, dtype=np.float32))

    def flush(self) -> np.ndarray:
        """The resampler's last samples (call once, at the end of the stream)."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def remove_dc_offset(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """A whole clip through a fresh :class:`DcBlocker`."""
    return DcBlocker(sample_rate)(samples)


def prepare_waveform(
    samples: np.ndarray,
    sample_rate: int,
    target_sample_rate: int = TARGET_SAMPLE_RATE,
    max_duration_s: float | None = None,
) -> np.ndarray:
    """Samples in any dtype / layout / rate -> checked mono float32 at ``target_sample_rate``, DC offset removed."""
    samples = np.asarray(samples)
    if samples.size == 0:
        raise EmptyAudioError("The audio is empty (0 samples). Record or upload a clip with speech in it.")
    if sample_rate <= 0:
        raise AudioError(f"Invalid sample rate {sample_rate} Hz.")
    duration_s = samples.shape[0] / sample_rate
    if max_duration_s is not None and duration_s > max_duration_s:
        raise AudioTooLongError(
            f"The audio is {duration_s:.1f} s long; at most {max_duration_s:g} s is accepted per request."
        )
    mono = to_mono(to_float32(samples))
    if not np.all(np.isfinite(mono)):
        raise InvalidSamplesError("The audio contains NaN or infinite sample values; send PCM or float audio in [-1, 1].")
    # Centred before resampling: a resampler turns the step from silence to the offset at each end into ringing.
    centred = remove_dc_offset(mono, sample_rate)
    return np.ascontiguousarray(resample(centred, sample_rate, target_sample_rate), dtype=np.float32)


def _decode_with_ffmpeg(path: Path, target_sample_rate: int, max_duration_s: float | None) -> np.ndarray:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioDecodeError(
            f"Cannot decode {path.name}: this format needs ffmpeg, which is not installed "
            f"(apt-get install ffmpeg). Without it, wav, flac, ogg and mp3 are accepted."
        )
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path)]
    if max_duration_s is not None:
        # Decode a little past the limit: enough to tell "too long" without decoding an hour of audio.
        command += ["-t", f"{max_duration_s + 0.5:.3f}"]
    command += ["-f", "f32le", "-ac", "1", "-ar", str(target_sample_rate), "-"]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        # ffmpeg prefixes its reason with the full path; users (and server logs) only need the name.
        reason = detail[-1].replace(str(path), path.name) if detail else f"ffmpeg exit code {result.returncode}"
        raise AudioDecodeError(f"Cannot decode {path.name} as audio ({reason}). Accepted: {ACCEPTED_FORMATS}.")
    return np.frombuffer(result.stdout, dtype=np.float32).copy()


def _sndfile_info(path: Path):
    """libsndfile's header of ``path``, or ``None`` for formats it cannot read (webm, m4a...);
    missing and 0-byte files are refused here, before any decoder sees them."""
    if not path.is_file():
        raise AudioDecodeError(f"No audio file at {path}.")
    if path.stat().st_size == 0:
        raise EmptyAudioError(f"{path.name} is an empty file (0 bytes). Accepted: {ACCEPTED_FORMATS}.")
    try:
        return soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return None


def load_audio(
    path: str | Path,
    target_sample_rate: int = TARGET_SAMPLE_RATE,
    max_duration_s: float | None = None,
) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform at ``target_sample_rate``.

    Raises an :class:`AudioError` subclass with a user-facing message for missing, unreadable,
    empty, non-finite or (with ``max_duration_s``) too-long audio.
    """
    path = Path(path)
    info = _sndfile_info(path)
    if info is None or info.frames <= 0:
        # Not a format libsndfile knows (webm, m4a...), or one whose length it cannot tell (some mp3).
        waveform = _decode_with_ffmpeg(path, target_sample_rate, max_duration_s)
        return prepare_waveform(waveform, target_sample_rate, target_sample_rate, max_duration_s)
    if max_duration_s is not None and info.frames / info.samplerate > max_duration_s:
        raise AudioTooLongError(
            f"{path.name} is {info.frames / info.samplerate:.1f} s long; at most {max_duration_s:g} s is accepted per request."
        )
    try:
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioDecodeError(f"Cannot decode {path.name} as audio ({error}). Accepted: {ACCEPTED_FORMATS}.") from error
    if samples.shape[0] == 0:
        raise EmptyAudioError(f"{path.name} holds no audio samples. Accepted: {ACCEPTED_FORMATS}.")
    return prepare_waveform(samples, sample_rate, target_sample_rate, max_duration_s)


#: Streaming block length: long enough that per-block overhead is negligible, short enough that a
#: block (plus its resampled copy) stays a few MB.
DEFAULT_BLOCK_S = 30.0


def _check_block(block: np.ndarray, name: str) -> np.ndarray:
    if not np.all(np.isfinite(block)):
        raise InvalidSamplesError(f"{name} contains NaN or infinite sample values; send PCM or float audio in [-1, 1].")
    return np.ascontiguousarray(block, dtype=np.float32)


def _ffmpeg_blocks(path: Path, target_sample_rate: int, block_samples: int) -> Iterator[np.ndarray]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioDecodeError(
            f"Cannot decode {path.name}: this format needs ffmpeg, which is not installed "
            f"(apt-get install ffmpeg). Without it, wav, flac, ogg and mp3 are accepted."
        )
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(target_sample_rate), "-"]
    # stderr goes to a temporary file so a chatty ffmpeg can never block on a full pipe.
    with tempfile.TemporaryFile() as stderr, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr) as process:
        try:
            while True:
                data = process.stdout.read(block_samples * 4)
                if not data:
                    break
                yield np.frombuffer(data[: len(data) - len(data) % 4], dtype=np.float32)
        finally:
            process.stdout.close()
            if process.poll() is None:  # the consumer stopped early
                process.kill()
        if process.wait() != 0:
            stderr.seek(0)
            detail = stderr.read().decode(errors="replace").strip().splitlines()
            reason = detail[-1].replace(str(path), path.name) if detail else f"ffmpeg exit code {process.returncode}"
            raise AudioDecodeError(f"Cannot decode {path.name} as audio ({reason}). Accepted: {ACCEPTED_FORMATS}.")


def iter_audio_blocks(
    path: str | Path, target_sample_rate: int = TARGET_SAMPLE_RATE, block_s: float = DEFAULT_BLOCK_S
) -> Iterator[np.ndarray]:
    """Decode ``path`` block by block (mono float32 at ``target_sample_rate``), for recordings too
    long to hold in memory. Concatenated, the blocks equal :func:`load_audio` up to resampler
    block edges (the DC offset is removed the same way). Same typed errors as :func:`load_audio`;
    an empty file yields nothing.
    """
    path = Path(path)
    info = _sndfile_info(path)
    block_samples = max(1, int(block_s * target_sample_rate))
    if info is None or info.frames <= 0:
        dc_blocker = DcBlocker(target_sample_rate)  # ffmpeg has resampled already, as in load_audio
        for block in _ffmpeg_blocks(path, target_sample_rate, block_samples):
            yield dc_blocker(_check_block(block, path.name))
        return
    dc_blocker = DcBlocker(info.samplerate)
    stream = None
    if info.samplerate != target_sample_rate:
        stream = soxr.ResampleStream(info.samplerate, target_sample_rate, 1, dtype="float32", quality="HQ")
    source_block = max(1, int(block_s * info.samplerate))
    try:
        for samples in soundfile.blocks(str(path), blocksize=source_block, dtype="float32", always_2d=True):
            mono = dc_blocker(_check_block(to_mono(samples), path.name))
            yield mono if stream is None else stream.resample_chunk(mono)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioDecodeError(f"Cannot decode {path.name} as audio ({error}). Accepted: {ACCEPTED_FORMATS}.") from error
    if stream is not None:
        tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if tail.size:
            yield tail
