"""Which clips of a corpus are scored, under which of the model's labels (a folder the model cannot
predict is skipped and reported, never guessed)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ser.core.labels import DEFAULT_EXCLUDED_LABELS, canonical_label
from ser.data.corpus import Clip, CorpusError, normalise_speaker_id, scan_corpus

logger = logging.getLogger(__name__)

# -- 1. which clips, under which model label ------------------------------------------------------
@dataclass
class EvaluationSet:
    """Clips relabelled with the model's own label names, plus everything left out and why."""

    root: Path
    clips: list[Clip]
    label_mapping: dict[str, str]
    skipped_folders: list[dict] = field(default_factory=list)
    excluded_counts: dict[str, int] = field(default_factory=dict)
    dropped_by_speaker_filter: int = 0


def parse_speakers(spec: str | Iterable[str] | None) -> set[str] | None:
    """``"21,22"`` or ``["21", "22"]`` -> normalised speaker ids; ``None``/empty: no filter."""
    if spec is None:
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    speakers = {normalise_speaker_id(item) for item in items if str(item).strip()}
    return speakers or None


def parse_label_list(spec: str | Iterable[str] | None) -> list[str]:
    """``"surprised,neutral"`` -> ``["surprised", "neutral"]``; empty string: none."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [item.strip() for item in items if item.strip()]


def _model_label_lookup(model_labels: Sequence[str]) -> dict[str, str]:
    """Corpus label (any alias, any case) -> the model's own spelling of it."""
    lookup: dict[str, str] = {}
    for label in model_labels:
        lookup[label.lower()] = label
        lookup.setdefault(canonical_label(label) or label.lower(), label)
    return lookup


def _to_model_label(label: str, lookup: Mapping[str, str]) -> str | None:
    return lookup.get(label.lower()) or lookup.get(canonical_label(label) or "")


def _class_folder(clip: Clip, root: Path) -> str:
    return Path(clip.path).relative_to(root).parts[0]


def select_clips(
    data_dir: str | Path,
    model_labels: Sequence[str],
    label_map: Mapping[str, str] | None = None,
    exclude_labels: Iterable[str] = DEFAULT_EXCLUDED_LABELS,
    speakers: set[str] | None = None,
) -> EvaluationSet:
    """Clips under ``data_dir`` whose folder maps onto one of ``model_labels``."""
    corpus = scan_corpus(data_dir, label_map=label_map, exclude_labels=exclude_labels)
    lookup = _model_label_lookup(model_labels)
    skipped: list[dict] = []
    for folder in corpus.unknown_folders:
        files = sum(1 for path in (corpus.root / folder).rglob("*") if path.is_file())
        skipped.append({"folder": folder, "reason": "not an emotion name this project knows; map it with --label_map", "files": files})
    for folder in corpus.empty_folders:
        skipped.append({"folder": folder, "reason": "no audio files", "files": 0})

    clips: list[Clip] = []
    mapping: dict[str, str] = {}
    unmappable: dict[str, tuple[str, int]] = {}
    for clip in corpus.clips:
        folder = _class_folder(clip, corpus.root)
        model_label = _to_model_label(clip.label, lookup)
        if model_label is None:
            _, count = unmappable.get(folder, (clip.label, 0))
            unmappable[folder] = (clip.label, count + 1)
            continue
        mapping[folder] = model_label
        clips.append(Clip(path=clip.path, label=model_label, speaker=clip.speaker, corpus=clip.corpus))
    for folder, (label, count) in sorted(unmappable.items()):
        skipped.append(
            {"folder": folder, "reason": f"maps to {label!r}, which the model does not predict ({', '.join(model_labels)})", "files": count}
        )
    for entry in skipped:
        logger.warning("Skipping folder %r (%d files): %s", entry["folder"], entry["files"], entry["reason"])

    dropped = 0
    if speakers is not None:
        found = sorted({clip.speaker for clip in clips if clip.speaker is not None})
        kept = [clip for clip in clips if clip.speaker in speakers]
        dropped = len(clips) - len(kept)
        if not kept:
            raise CorpusError(f"No clips from speakers {sorted(speakers)}; speakers found: {found or 'none parsed from the file names'}.")
        clips = kept
    if not clips:
        raise CorpusError(
            f"No clip under {corpus.root} maps onto the model's labels ({', '.join(model_labels)}); "
            f"skipped folders: {[entry['folder'] for entry in skipped]}. Map folder names with --label_map."
        )
    return EvaluationSet(
        root=corpus.root,
        clips=clips,
        label_mapping=dict(sorted(mapping.items())),
        skipped_folders=skipped,
        excluded_counts=dict(corpus.excluded_counts),
        dropped_by_speaker_filter=dropped,
    )


