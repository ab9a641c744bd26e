"""Build the app's example clips from RAVDESS test actors (21-24 are never trained on), by a rule fixed
before anyone looked at the model's answers:

- **one clip per class**, in the label order (angry, disgusted, fearful, happy, neutral, sad), actors
  alternating 23, 24, 23, ...: statement 1 ("Kids are talking by the door"), repetition 1, strong
  intensity (normal for neutral, which RAVDESS records at normal intensity only), copied as they are;
- **one long recording for the timeline**: actor 22 through neutral, happy, angry, sad, fearful and
  disgusted, statements 1 and 2 of each (repetition 1, strong intensity, normal for neutral), each
  clip followed by 1.5 s of silence: about a minute.

RAVDESS (Livingstone & Russo, 2018) is CC BY-NC-SA 4.0, the Space's own licence; examples/README.md
gives the attribution. Writes ``examples/examples.json``, which the app reads for the example labels.

    python -m scripts.make_examples                         # from ../shared/data/ravdess/Emotions
    python -m scripts.make_examples --ravdess_dir DIR --output_dir examples
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from transformers import HfArgumentParser

from ser.audio.loader import TARGET_SAMPLE_RATE, load_audio
from ser.core.labels import DEFAULT_LABELS
from ser.serving.examples import CLIP_PANEL, MANIFEST_NAME, TIMELINE_PANEL

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
#: RAVDESS's class folders in the Kaggle "Audio Emotions" layout, by the project's label.
RAVDESS_FOLDERS = {"angry": "Angry", "disgusted": "Disgusted", "fearful": "Fearful", "happy": "Happy", "neutral": "Neutral", "sad": "Sad"}
CLIP_ACTORS = (23, 24)
TIMELINE_ACTOR = 22
TIMELINE_ORDER = ("neutral", "happy", "angry", "sad", "fearful", "disgusted")
TIMELINE_PAUSE_S = 1.5


@dataclass
class MakeExamplesArguments:
    ravdess_dir: str = field(
        default=str(REPO_ROOT.parent / "shared" / "data" / "ravdess" / "Emotions"),
        metadata={"help": "RAVDESS in the Kaggle layout: <Class>/03-01-<emotion>-<intensity>-<statement>-<repetition>-<actor>.<ext>."},
    )
    output_dir: str = field(default=str(REPO_ROOT / "examples"), metadata={"help": "Where the clips and examples.json go."})


def intensity_of(label: str) -> str:
    return "normal" if label == "neutral" else "strong"


def ravdess_clip(ravdess_dir: Path, label: str, actor: int, statement: int, repetition: int = 1) -> Path:
    """The one RAVDESS file of ``label`` by ``actor`` at the rule's intensity (field 4: 01 normal, 02 strong)."""
    intensity = "01" if intensity_of(label) == "normal" else "02"
    pattern = f"03-01-??-{intensity}-{statement:02d}-{repetition:02d}-{actor:02d}.*"
    matches = sorted((ravdess_dir / RAVDESS_FOLDERS[label]).glob(pattern))
    if len(matches) != 1:
        raise FileNotFoundError(f"Expected one RAVDESS clip {RAVDESS_FOLDERS[label]}/{pattern}, found {len(matches)} in {ravdess_dir}")
    return matches[0]


def make_examples(ravdess_dir: Path, output_dir: Path) -> list[dict]:
    output_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, label in enumerate(DEFAULT_LABELS):
        actor = CLIP_ACTORS[index % len(CLIP_ACTORS)]
        source = ravdess_clip(ravdess_dir, label, actor, statement=1)
        name = f"{label}_actor{actor}{source.suffix}"
        shutil.copyfile(source, output_dir / name)
        entries.append(
            {
                "file": name, "panel": CLIP_PANEL, "emotion": label, "actor": actor, "intensity": intensity_of(label),
                "label": f"RAVDESS actor {actor}: {label}, {intensity_of(label)} intensity",
                "sources": [f"{source.parent.name}/{source.name}"],
            }
        )
    pieces, sources = [], []
    pause = np.zeros(int(TIMELINE_PAUSE_S * TARGET_SAMPLE_RATE), np.float32)
    for label in TIMELINE_ORDER:
        for statement in (1, 2):
            source = ravdess_clip(ravdess_dir, label, TIMELINE_ACTOR, statement)
            pieces += [load_audio(source, TARGET_SAMPLE_RATE), pause]
            sources.append(f"{source.parent.name}/{source.name}")
    recording = np.concatenate(pieces)
    name = f"timeline_actor{TIMELINE_ACTOR}.flac"
    soundfile.write(str(output_dir / name), recording, TARGET_SAMPLE_RATE, subtype="PCM_16")
    entries.append(
        {
            "file": name, "panel": TIMELINE_PANEL, "emotion": None, "actor": TIMELINE_ACTOR, "intensity": "strong (neutral: normal)",
            "label": f"RAVDESS actor {TIMELINE_ACTOR}: six emotions in {len(recording) / TARGET_SAMPLE_RATE:.0f} s",
            "order": list(TIMELINE_ORDER),
            "sources": sources,
        }
    )
    (output_dir / MANIFEST_NAME).write_text(json.dumps(entries, indent=2) + "\n")
    return entries


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(MakeExamplesArguments).parse_args_into_dataclasses()
    ravdess_dir = Path(args.ravdess_dir)
    if not ravdess_dir.is_dir():
        raise SystemExit(f"No RAVDESS folder at {ravdess_dir} (--ravdess_dir).")
    for entry in make_examples(ravdess_dir, Path(args.output_dir)):
        logger.info("%s: %s (from %s)", entry["file"], entry["label"], ", ".join(entry["sources"][:2]) + (" ..." if len(entry["sources"]) > 2 else ""))


if __name__ == "__main__":
    main()
