"""Write a corpus of awkward and broken uploads for robustness tests of the Space.

    python -m scripts.make_bad_inputs --output_dir /tmp/bad-inputs            # ~40 cases, ~6 MB
    python -m scripts.make_bad_inputs --output_dir /tmp/bad-inputs --max_upload_mb 32

Each case is one file plus an entry in ``manifest.json``: ``name``, ``file``, ``expect``
(``error``: the app must refuse it with a message; ``answer``: readable speech the app must
classify; ``either``: a clear error or a valid answer are both fine, e.g. a 0.05 s clip) and a
description. Speech comes from espeak-ng (synthetic, redistributable); the lossy formats are made
by ffmpeg. Nothing is big except the over-the-upload-limit case (``--max_upload_mb`` + 1 MB); the
1 h recordings are silence in compact codecs (flac / opus), written in blocks or by ffmpeg's
``anullsrc``, so generating the corpus takes seconds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

REPO_ROOT = Path(__file__).resolve().parent.parent
from ser.audio.loader import resample

logger = logging.getLogger("make_bad_inputs")

#: Written into the text-as-audio cases; a test can check the server log never echoes file contents.
CONTENT_MARKER = "SER-BAD-INPUT-CONTENT-MARKER-7f3a"
SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs away into the forest."
EXPECTATIONS = ("error", "answer", "either")


@dataclass
class BadInputArguments:
    output_dir: str = field(metadata={"help": "Folder to write the cases and manifest.json into (created)."})
    max_upload_mb: float = field(
        default=32.0, metadata={"help": "The server's upload limit: the 'over_upload_limit' case is 1 MB larger."}
    )
    max_duration_s: float = field(
        default=60.0, metadata={"help": "The server's duration limit: the 'over_duration' case is 5 s longer."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for the random-bytes and noise cases."})


@dataclass(frozen=True)
class Case:
    name: str
    file: str
    expect: str
    description: str


def espeak_speech(directory: Path) -> tuple[np.ndarray, int]:
    """One sentence of espeak-ng speech (float32 mono, its native 22.05 kHz)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng); it provides the speech cases.")
    path = directory / "espeak.wav"
    subprocess.run([espeak, "-s", "150", "-w", str(path), SENTENCE], check=True, capture_output=True)
    samples, sample_rate = soundfile.read(str(path), dtype="float32")
    path.unlink()
    return samples, sample_rate


def ffmpeg(*args: str) -> None:
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise SystemExit("ffmpeg is not installed (apt-get install ffmpeg); it makes the mp3/ogg/webm/m4a cases.")
    subprocess.run([binary, "-nostdin", "-v", "error", "-y", *args], check=True)


def write_silence_in_blocks(path: Path, duration_s: float, sample_rate: int, block_s: float = 60.0) -> None:
    """Long silence without holding it in memory (flac compresses it to almost nothing)."""
    block = np.zeros(int(block_s * sample_rate), dtype=np.int16)
    remaining = int(duration_s * sample_rate)
    with soundfile.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as handle:
        while remaining > 0:
            handle.write(block[: min(remaining, block.size)])
            remaining -= block.size


def make_corpus(output_dir: Path, max_upload_mb: float = 32.0, max_duration_s: float = 60.0, seed: int = 0) -> list[Case]:
    """Write every case into ``output_dir`` (plus ``manifest.json``); returns the cases."""
    output_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    speech, rate = espeak_speech(output_dir)
    cases: list[Case] = []

    def add(name: str, file: str, expect: str, description: str) -> Path:
        assert expect in EXPECTATIONS, expect
        cases.append(Case(name, file, expect, description))
        return output_dir / file

    def wav(name: str, file: str, expect: str, description: str, samples: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
        soundfile.write(str(add(name, file, expect, description)), samples, sample_rate, subtype=subtype)

    reference = output_dir / "reference_speech.wav"
    wav("speech_wav", reference.name, "answer", "espeak-ng sentence, 22.05 kHz 16-bit mono wav (the control case)", speech, rate, "PCM_16")

    # -- not audio at all
    add("empty_wav", "empty.wav", "error", "0-byte file").write_bytes(b"")
    add("text_as_wav", "notes.wav", "error", "a text file renamed .wav").write_text(f"{CONTENT_MARKER}\nshopping list: milk, eggs\n" * 20)
    add("text_as_mp3", "notes.mp3", "error", "a text file renamed .mp3").write_text(f"{CONTENT_MARKER}\n" * 50)
    add("html_as_webm", "page.webm", "error", "an HTML page renamed .webm").write_text(f"<html><body>{CONTENT_MARKER}</body></html>")
    add("random_bytes_wav", "random.wav", "error", "64 KB of random bytes named .wav").write_bytes(rng.bytes(64 * 1024))
    add("random_bytes_noext", "random_bytes", "error", "64 KB of random bytes, no extension").write_bytes(rng.bytes(64 * 1024))
    zip_path = add("zip_as_m4a", "archive.m4a", "error", "a zip archive renamed .m4a")
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("readme.txt", CONTENT_MARKER)
    add("id3_only_mp3", "tag_only.mp3", "error", "an mp3 with an ID3 tag and no audio frames").write_bytes(
        b"ID3\x04\x00\x00\x00\x00\x00\x0aTIT2\x00\x00\x00\x02\x00\x00\x00x"
    )

    # -- broken WAV containers
    full = reference.read_bytes()
    add("truncated_header", "truncated_header.wav", "error", "the first 20 bytes of a wav (header cut)").write_bytes(full[:20])
    add("header_only", "header_only.wav", "error", "a 44-byte wav header and no samples").write_bytes(full[:44])
    add("truncated_data", "truncated_data.wav", "either", "a wav cut in the middle of its data chunk").write_bytes(full[: len(full) // 2])
    add("riff_garbage", "riff_garbage.wav", "error", "'RIFF....WAVE' followed by garbage").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + rng.bytes(200))

    # -- bad sample values (float WAV can hold them)
    with_nan = speech.copy()
    with_nan[1000:1100] = np.nan
    wav("nan_samples", "nan.wav", "error", "float32 wav with NaN samples", with_nan, rate, "FLOAT")
    with_inf = speech.copy()
    with_inf[::500] = np.inf
    wav("inf_samples", "inf.wav", "error", "float32 wav with +Inf samples", with_inf, rate, "FLOAT")
    wav("float_out_of_range", "loud_float.wav", "either", "float32 wav with samples up to +-8 (not clipped to [-1, 1])", speech * 8.0 / max(1e-6, np.abs(speech).max()), rate, "FLOAT")

    # -- lengths
    wav("one_sample", "one_sample.wav", "either", "a single sample", speech[:1], rate)
    wav("very_short", "short_0.05s.wav", "either", "0.05 s of speech", speech[: int(0.05 * rate)], rate)
    wav("over_duration", "over_duration.flac", "error", f"speech looped to {max_duration_s + 5:g} s (over the duration limit)",
        np.tile(speech, int(np.ceil((max_duration_s + 5) * rate / speech.size)))[: int((max_duration_s + 5) * rate)], rate)
    write_silence_in_blocks(add("one_hour_flac", "one_hour.flac", "error", "1 h of silence (flac, written in 60 s blocks)"), 3600, 16_000)
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "3600", "-c:a", "libopus", "-b:a", "6k", "-frame_duration", "120",
           str(add("one_hour_webm", "one_hour.webm", "error", "1 h of silence (opus webm from ffmpeg anullsrc)")))

    # -- rates, layouts, sample formats
    wav("rate_8k", "speech_8k.wav", "answer", "speech at 8 kHz (telephone)", resample(speech, rate, 8_000), 8_000)
    wav("rate_96k", "speech_96k.wav", "answer", "speech at 96 kHz 24-bit", resample(speech, rate, 96_000), 96_000, "PCM_24")
    six = np.stack([speech * gain for gain in (1.0, 0.9, 0.5, 0.2, 0.7, 0.3)], axis=1)
    wav("six_channels", "speech_6ch.wav", "answer", "6-channel (5.1) speech", six, rate)
    wav("int32_pcm", "speech_int32.wav", "answer", "32-bit integer PCM", speech, rate, "PCM_32")
    wav("float64", "speech_f64.wav", "answer", "64-bit float wav", speech.astype(np.float64), rate, "DOUBLE")
    wav("ulaw_8k", "speech_ulaw.wav", "answer", "8 kHz mu-law wav", resample(speech, rate, 8_000), 8_000, "ULAW")
    wav("silence", "silence.wav", "either", "3 s of digital silence", np.zeros(3 * 16_000, dtype=np.float32), 16_000)
    wav("white_noise", "noise.wav", "either", "3 s of white noise", (0.3 * rng.standard_normal(3 * 16_000)).astype(np.float32), 16_000)
    wav("clipped", "clipped.wav", "either", "speech amplified 30x and hard-clipped", np.clip(speech * 30, -1, 1), rate)
    wav("dc_offset", "dc_offset.wav", "either", "speech on a +0.5 DC offset", np.clip(speech + 0.5, -1, 1), rate)

    # -- other containers and codecs (as phones and browsers send them)
    for codec_name, suffix, args in (
        ("mp3", "mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]),
        ("ogg_vorbis", "ogg", ["-c:a", "libvorbis"]),
        ("webm_opus", "webm", ["-c:a", "libopus", "-ar", "48000"]),
        ("m4a_aac", "m4a", ["-c:a", "aac", "-b:a", "64k"]),
        ("flac", "flac", []),
    ):
        ffmpeg("-i", str(reference), *args, str(add(f"speech_{codec_name}", f"speech.{suffix}", "answer", f"speech as {suffix} ({codec_name})")))
    shutil.copy(output_dir / "speech.mp3", add("mp3_named_wav", "mp3_inside.wav", "answer", "an mp3 file named .wav"))
    shutil.copy(output_dir / "speech.flac", add("flac_named_mp3", "flac_inside.mp3", "answer", "a flac file named .mp3"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=5", "-t", "2", "-an", "-c:v", "libvpx",
           str(add("video_without_audio", "no_audio_track.webm", "error", "a webm video with no audio stream")))
    shutil.copy(reference, add("unicode_name", "grüße Ünïcödé 声音 (1).wav", "answer", "speech under a non-ASCII file name with spaces"))

    # -- over the upload size limit: random bytes behind a valid-looking WAV header
    oversize = add("over_upload_limit", "over_upload_limit.wav", "error", f"{max_upload_mb + 1:g} MB file (over the upload limit)")
    with open(oversize, "wb") as handle:
        handle.write(full[:44])
        remaining = int((max_upload_mb + 1) * 1024 * 1024)
        while remaining > 0:
            chunk = min(remaining, 1024 * 1024)
            handle.write(rng.bytes(chunk))
            remaining -= chunk

    (output_dir / "manifest.json").write_text(json.dumps([case.__dict__ for case in cases], indent=1, ensure_ascii=False))
    return cases


def main() -> None:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(BadInputArguments).parse_args_into_dataclasses()
    cases = make_corpus(Path(args.output_dir), args.max_upload_mb, args.max_duration_s, args.seed)
    size_mb = sum(os.path.getsize(Path(args.output_dir) / case.file) for case in cases) / 1e6
    print(f"Wrote {len(cases)} cases ({size_mb:.1f} MB) and manifest.json to {args.output_dir}")


if __name__ == "__main__":
    main()
