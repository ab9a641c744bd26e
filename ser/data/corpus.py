"""Finding labelled clips on disk and telling whose voice each one is.

Two layouts are read, both "one folder per class":
- Kaggle "Audio Emotions": ``Emotions/{Angry,Disgusted,...}/`` (the folder itself or its parent);
- AESDD: ``{anger,disgust,fear,happiness,sadness}/`` (EMOVO, EMO-DB and nEMO are shipped in it too).

Speakers are parsed from the original file names of each corpus (RAVDESS, CREMA-D, TESS, SAVEE,
AESDD, EMOVO, EMO-DB, nEMO), because a speaker-independent split and per-speaker scores both need
them. A corpus whose names encode no speaker comes in one of two ways: add its pattern to
:func:`parse_speaker` (one regular expression and one line), or keep one sub-folder per speaker
inside each class folder and scan with ``speaker_from="parent"`` (train.py ``--speaker_from parent``).
A clip whose name no pattern knows belongs to the corpus named after its data folder.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ser.core.labels import canonical_label

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS: frozenset[str] = frozenset({".wav", ".flac", ".mp3", ".ogg", ".m4a", ".webm", ".opus", ".aac"})


class CorpusError(ValueError):
    """The data folder does not hold a usable corpus; the message says what was expected."""


@dataclass(frozen=True)
class Speaker:
    corpus: str
    speaker_id: str


@dataclass(frozen=True)
class Clip:
    path: str
    label: str
    speaker: str | None
    corpus: str | None


# Each pattern sees the file stem; the speaker id is normalised so users can type "21" or "f1".
_RAVDESS = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_CREMA_D = re.compile(r"^(\d{4})_[A-Z]{3}_[A-Z]{3}_[A-Z]{1,2}$", re.IGNORECASE)
_TESS = re.compile(r"^(OAF|YAF)_", re.IGNORECASE)
_SAVEE_PREFIXED = re.compile(r"^(DC|JE|JK|KL)_(a|d|f|h|n|sa|su)\d{2}$", re.IGNORECASE)
_SAVEE_BARE = re.compile(r"^(a|d|f|h|n|sa|su)\d{2}$", re.IGNORECASE)
_AESDD = re.compile(r"^[a-z]\d{2}[a-z]?\s*\((\d+)\)", re.IGNORECASE)
_EMOVO = re.compile(r"^(dis|gio|neu|pau|rab|sor|tri)-([fm]\d)-", re.IGNORECASE)
# EMO-DB: speaker (2 digits), text code (letter + 2 digits), emotion letter (W, L, E, A, F, T, N), version.
_EMODB = re.compile(r"^(\d{2})[a-b]\d{2}[WLEAFTN][a-z]?$")
# nEMO: speaker_emotion_number, e.g. EB0_anger_1.
_NEMO = re.compile(r"^([A-Z]{2}\d)_(anger|fear|happiness|neutral|sadness|surprised)_\d+$", re.IGNORECASE)

#: SAVEE clips in Audio Emotions carry no speaker: one group, so they never straddle splits.
SAVEE_GROUP = "savee"


def normalise_speaker_id(speaker_id: str) -> str:
    """``"07"`` and ``"7"`` name the same actor; other ids are case-folded."""
    text = str(speaker_id).strip()
    return str(int(text)) if text.isdigit() else text.lower()


def parse_speaker(file_name: str) -> Speaker | None:
    """The corpus and speaker a file name encodes, or ``None`` for a name no known corpus uses."""
    stem = Path(file_name).stem.strip()
    if match := _RAVDESS.match(stem):
        return Speaker("ravdess", normalise_speaker_id(match.group(7)))
    if match := _CREMA_D.match(stem):
        return Speaker("crema-d", normalise_speaker_id(match.group(1)))
    if match := _TESS.match(stem):
        return Speaker("tess", match.group(1).lower())
    if match := _SAVEE_PREFIXED.match(stem):
        return Speaker("savee", match.group(1).lower())
    if _SAVEE_BARE.match(stem):
        return Speaker("savee", SAVEE_GROUP)
    if match := _AESDD.match(stem):
        return Speaker("aesdd", normalise_speaker_id(match.group(1)))
    if match := _EMOVO.match(stem):
        return Speaker("emovo", match.group(2).lower())
    if match := _EMODB.match(stem):
        return Speaker("emodb", normalise_speaker_id(match.group(1)))
    if match := _NEMO.match(stem):
        return Speaker("nemo", match.group(1).lower())
    return None


#: Where a clip's speaker comes from: its file name (the patterns above) or its parent folder.
SPEAKER_SOURCES: tuple[str, ...] = ("name", "parent")


def corpus_name(data_dir: str | Path) -> str:
    """The corpus of a data folder's clips when no file-name pattern names it: the folder's own name
    (its parent's when the folder is ``Emotions/``), lower-cased."""
    path = Path(data_dir).expanduser().resolve()
    if path.name.lower() == "emotions":
        path = path.parent
    return path.name.lower()


@dataclass
class Corpus:
    """Clips found under one data folder, plus what was left out and why."""

    root: Path
    clips: list[Clip]
    unknown_folders: list[str] = field(default_factory=list)
    excluded_counts: dict[str, int] = field(default_factory=dict)
    empty_folders: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted({clip.label for clip in self.clips})

    def label_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(clip.label for clip in self.clips).items()))

    def unparsed_speaker_files(self) -> list[str]:
        return [clip.path for clip in self.clips if clip.speaker is None]


def _class_of(folder_name: str, label_map: Mapping[str, str]) -> str | None:
    key = folder_name.strip().lower()
    return label_map[key] if key in label_map else canonical_label(key)


def _is_class_root(folder: Path, label_map: Mapping[str, str]) -> bool:
    return any(child.is_dir() and _class_of(child.name, label_map) for child in folder.iterdir())


def find_class_root(data_dir: str | Path, label_map: Mapping[str, str] | None = None) -> Path:
    """The folder whose sub-folders are the classes: ``data_dir`` itself or its ``Emotions/`` child."""
    data_dir = Path(data_dir).expanduser()
    label_map = label_map or {}
    if not data_dir.is_dir():
        raise CorpusError(
            f"Data folder {data_dir} does not exist. Expected a folder with one sub-folder per class "
            "(Audio Emotions: Emotions/Angry, Emotions/Happy, ...; AESDD: anger, happiness, ...)."
        )
    if _is_class_root(data_dir, label_map):
        return data_dir
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and child.name.lower() == "emotions" and _is_class_root(child, label_map):
            return child
    found = sorted(child.name for child in data_dir.iterdir() if child.is_dir())
    raise CorpusError(
        f"No class folders found in {data_dir} (sub-folders: {found or 'none'}). Expected one folder per class named "
        "like Angry/Disgusted/Fearful/Happy/Neutral/Sad/Surprised (any case) or anger/disgust/fear/happiness/sadness, "
        "directly or under Emotions/; map other names with --label_map."
    )


def scan_corpus(
    data_dir: str | Path,
    label_map: Mapping[str, str] | None = None,
    exclude_labels: Iterable[str] = (),
    speaker_from: str = "name",
) -> Corpus:
    """All audio clips under ``data_dir``, labelled by folder, with speakers parsed from names.

    Folders that map to no label are listed in ``unknown_folders`` (the caller decides whether
    that is fatal); classes in ``exclude_labels`` are counted in ``excluded_counts``.
    ``speaker_from="parent"``: the speaker is the folder holding the clip inside its class folder
    (``angry/spk01/x.wav``), and the corpus is the data folder's name.
    """
    if speaker_from not in SPEAKER_SOURCES:
        raise CorpusError(f"speaker_from must be one of {', '.join(SPEAKER_SOURCES)}, got {speaker_from!r}.")
    label_map = {key.lower(): value for key, value in (label_map or {}).items()}
    excluded = {canonical_label(label) or label for label in exclude_labels}
    root = find_class_root(data_dir, label_map)
    corpus = Corpus(root=root, clips=[])
    for folder in sorted(child for child in root.iterdir() if child.is_dir()):
        label = _class_of(folder.name, label_map)
        if label is None:
            corpus.unknown_folders.append(folder.name)
            continue
        files = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS)
        if label in excluded:
            corpus.excluded_counts[label] = corpus.excluded_counts.get(label, 0) + len(files)
            continue
        if not files:
            corpus.empty_folders.append(folder.name)
            continue
        for path in files:
            if speaker_from == "parent":
                speaker = Speaker(corpus_name(data_dir), normalise_speaker_id(path.parent.name)) if path.parent != folder else None
            else:
                speaker = parse_speaker(path.name)
            corpus.clips.append(
                Clip(
                    path=str(path),
                    label=label,
                    speaker=speaker.speaker_id if speaker else None,
                    corpus=speaker.corpus if speaker else None,
                )
            )
    if not corpus.clips:
        raise CorpusError(
            f"No audio clips found under {root} (accepted extensions: {', '.join(sorted(AUDIO_EXTENSIONS))}; "
            f"empty class folders: {corpus.empty_folders or 'none'}; excluded: {corpus.excluded_counts or 'none'})."
        )
    return corpus
