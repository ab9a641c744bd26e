"""Synthetic speech from espeak-ng: neutral read sentences in a few voices, speeds and pitches. Not
the app's examples (those are real acted speech, ``python -m scripts.make_examples``); used where
redistributable speech of any amount is needed (``benchmarks.batch_engines``). Speech produced by
espeak-ng is not covered by its GPL licence.

    apt-get install -y espeak-ng && python scripts/synthetic_speech.py --output_dir /tmp/voices
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import soundfile
from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ser.audio.loader import TARGET_SAMPLE_RATE, load_audio  # noqa: E402

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExampleSpec:
    """One clip: the text and how espeak-ng reads it."""

    file_name: str
    text: str
    voice: str
    speed_wpm: int
    pitch: int  # espeak-ng pitch, 0-99 (50 is the voice's default)
    amplitude: int = 100  # espeak-ng amplitude, 0-200


VOICES: tuple[ExampleSpec, ...] = (
    ExampleSpec("fast_high_voice.flac", "We won the match! I cannot believe it, this is wonderful.", "en-us+f3", 190, 80, 140),
    ExampleSpec("slow_low_voice.flac", "I waited all evening, and nobody came.", "en-gb+m3", 110, 20, 70),
    ExampleSpec("loud_voice.wav", "Stop that right now. I told you twice already.", "en-us+m1", 175, 40, 160),
    ExampleSpec("plain_voice.flac", "The train to the airport leaves at half past nine.", "en-gb", 150, 50, 100),
)


@dataclass
class SyntheticSpeechArguments:
    output_dir: Path = field(metadata={"help": "Where to write the clips."})


def synthesize(spec: ExampleSpec, output_dir: Path) -> Path:
    """espeak-ng -> temporary 22.05 kHz wav -> mono at the project's rate (the shared loader) -> file."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng).")
    with tempfile.TemporaryDirectory() as scratch:
        raw_path = Path(scratch) / "raw.wav"
        command = [espeak, "-v", spec.voice, "-s", str(spec.speed_wpm), "-p", str(spec.pitch), "-a", str(spec.amplitude)]
        subprocess.run([*command, "-w", str(raw_path), spec.text], check=True, capture_output=True)
        waveform = load_audio(raw_path, TARGET_SAMPLE_RATE)
    path = output_dir / spec.file_name
    soundfile.write(str(path), waveform, TARGET_SAMPLE_RATE, subtype="PCM_16")
    logger.info("%s: %.2f s (%s, %d wpm, pitch %d)", path.name, len(waveform) / TARGET_SAMPLE_RATE, spec.voice, spec.speed_wpm, spec.pitch)
    return path


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    (args,) = HfArgumentParser(SyntheticSpeechArguments).parse_args_into_dataclasses()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for spec in VOICES:
        synthesize(spec, args.output_dir)


if __name__ == "__main__":
    main()
