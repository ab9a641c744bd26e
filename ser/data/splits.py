"""Train / eval / test splits of a scanned corpus, speaker-independent by default.

A clip-level random split lets the same voice appear in training and test, which inflates scores
(the model partly recognises the speaker). The default here holds whole speakers out. Speakers are
grouped by ``(corpus, speaker)`` because ids from different corpora can collide (RAVDESS actor
"21" is not CREMA-D speaker "21"); SAVEE clips without a speaker prefix form one group, so they
never straddle splits.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import train_test_split

from ser.data.corpus import Clip, normalise_speaker_id

logger = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("train", "eval", "test")
SPLIT_STRATEGIES: tuple[str, ...] = ("speaker", "random")

#: A speaker group: (corpus, normalised speaker id).
Group = tuple[str, str]


class SplitError(ValueError):
    """The requested split cannot be made; the message says why and what to change."""


@dataclass
class Split:
    """Clips per split, plus the speaker groups each split holds (empty for clip-level splits)."""

    strategy: str
    train: list[Clip]
    eval: list[Clip]
    test: list[Clip]
    speakers: dict[str, list[Group]] = field(default_factory=dict)
    #: Clips without a parsable speaker that were split at random (``allow_random_fallback``).
    random_fallback_clips: int = 0

    def parts(self) -> dict[str, list[Clip]]:
        return {"train": self.train, "eval": self.eval, "test": self.test}

    def summary(self) -> dict:
        """What ``split.json`` records: per split, the speakers and clip counts per label."""
        result: dict = {"strategy": self.strategy, "random_fallback_clips": self.random_fallback_clips}
        for name, clips in self.parts().items():
            result[name] = {
                "num_clips": len(clips),
                "label_counts": dict(sorted(Counter(clip.label for clip in clips).items())),
                "speakers": [f"{corpus}:{speaker}" for corpus, speaker in self.speakers.get(name, [])],
            }
        return result


def group_of(clip: Clip) -> Group | None:
    """The speaker group of a clip, or ``None`` when its file name names no speaker."""
    if clip.speaker is None:
        return None
    return (clip.corpus or "unknown", normalise_speaker_id(clip.speaker))


def parse_speaker_list(spec: str | Sequence[str] | None) -> list[str]:
    """``"21,22"`` / ``["21", "ravdess:22"]`` -> normalised entries (``corpus:id`` keeps its corpus)."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else [part for item in spec for part in str(item).split(",")]
    result = []
    for item in (part.strip() for part in items):
        if not item:
            continue
        if ":" in item:
            corpus, speaker = item.split(":", 1)
            result.append(f"{corpus.strip().lower()}:{normalise_speaker_id(speaker)}")
        else:
            result.append(normalise_speaker_id(item))
    return result


def resolve_speakers(entries: Iterable[str], groups: Iterable[Group], flag: str) -> list[Group]:
    """Match user speaker entries (``"21"`` or ``"ravdess:21"``) against the corpus's groups."""
    groups = sorted(set(groups))
    resolved: list[Group] = []
    for entry in entries:
        if ":" in entry:
            corpus, speaker = entry.split(":", 1)
            matches = [group for group in groups if group == (corpus, speaker)]
        else:
            matches = [group for group in groups if group[1] == entry]
        if not matches:
            known = ", ".join(f"{corpus}:{speaker}" for corpus, speaker in groups[:30])
            more = f" (and {len(groups) - 30} more)" if len(groups) > 30 else ""
            raise SplitError(f"{flag}: speaker {entry!r} is not in the corpus. Known speakers: {known}{more}.")
        if len(matches) > 1:
            options = ", ".join(f"{corpus}:{speaker}" for corpus, speaker in matches)
            raise SplitError(f"{flag}: speaker {entry!r} exists in several corpora ({options}); write it as corpus:id.")
        resolved.extend(match for match in matches if match not in resolved)
    return resolved


def drop_speakers(clips: Sequence[Clip], entries: Iterable[str], flag: str) -> list[Clip]:
    """``clips`` without those of the listed speakers (each entry must name a speaker in ``clips``)."""
    dropped = set(resolve_speakers(entries, (group for clip in clips if (group := group_of(clip)) is not None), flag))
    return [clip for clip in clips if group_of(clip) not in dropped]


def _pick_groups(order: Sequence[Group], sizes: dict[Group, int], target: float) -> list[Group]:
    """Walk ``order`` and take each group that brings the clip count closer to ``target``."""
    chosen, count = [], 0
    for group in order:
        if abs(count + sizes[group] - target) < abs(count - target):
            chosen.append(group)
            count += sizes[group]
    return chosen


def _unparsed_error(clips: Sequence[Clip]) -> SplitError:
    examples = "\n  ".join(clip.path for clip in clips[:5])
    return SplitError(
        f"{len(clips)} clip(s) have file names from which no speaker can be parsed (known: RAVDESS, CREMA-D, TESS, "
        f"SAVEE, AESDD, EMOVO), so a speaker-independent split is impossible. Examples:\n  {examples}\n"
        "Rename them, use --split random, or pass --allow_random_fallback to split just these clips at random."
    )


def random_split(clips: Sequence[Clip], eval_fraction: float, test_fraction: float, seed: int) -> tuple[list[Clip], list[Clip], list[Clip]]:
    """Clip-level split: ``train_test_split(test_size=test_fraction, random_state=seed)`` for test, then
    ``eval_fraction`` (of all clips) carved from the rest, so the test set does not depend on ``eval_fraction``."""
    clips = list(clips)
    _check_fractions(eval_fraction, test_fraction)
    rest, test = (clips, []) if test_fraction == 0 else train_test_split(clips, test_size=test_fraction, random_state=seed)
    if eval_fraction == 0 or not rest:
        return list(rest), [], list(test)
    eval_size = max(1, round(eval_fraction * len(clips)))
    if eval_size >= len(rest):
        raise SplitError(f"eval_fraction {eval_fraction} + test_fraction {test_fraction} leave no clips for training.")
    train, evaluation = train_test_split(rest, test_size=eval_size, random_state=seed)
    return list(train), list(evaluation), list(test)


def _check_fractions(eval_fraction: float, test_fraction: float) -> None:
    if not (0 <= eval_fraction < 1 and 0 <= test_fraction < 1 and eval_fraction + test_fraction < 1):
        raise SplitError(f"eval_fraction ({eval_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) and sum to < 1.")


def speaker_split(
    clips: Sequence[Clip],
    eval_fraction: float,
    test_fraction: float,
    seed: int,
    eval_speakers: Sequence[str] = (),
    test_speakers: Sequence[str] = (),
    allow_random_fallback: bool = False,
) -> Split:
    """Hold whole speakers out: explicit ``test_speakers`` / ``eval_speakers`` first, then groups in a
    seeded random order until each split's clip count is closest to its fraction of all clips."""
    _check_fractions(eval_fraction, test_fraction)
    parsed = [clip for clip in clips if group_of(clip) is not None]
    unparsed = [clip for clip in clips if group_of(clip) is None]
    if unparsed and not allow_random_fallback:
        raise _unparsed_error(unparsed)
    sizes = Counter(group_of(clip) for clip in parsed)
    all_groups = sorted(sizes)
    test_groups = resolve_speakers(test_speakers, all_groups, "--test_speakers")
    eval_groups = resolve_speakers(eval_speakers, all_groups, "--eval_speakers")
    if overlap := set(test_groups) & set(eval_groups):
        raise SplitError(f"Speakers in both --test_speakers and --eval_speakers: {sorted(overlap)}.")

    order = [all_groups[index] for index in np.random.default_rng(seed).permutation(len(all_groups))]
    total = len(parsed)
    if not test_groups and test_fraction > 0:
        free = [group for group in order if group not in eval_groups]
        test_groups = _pick_groups(free, sizes, test_fraction * total) or free[:1]
    if not eval_groups and eval_fraction > 0:
        free = [group for group in order if group not in test_groups]
        eval_groups = _pick_groups(free, sizes, eval_fraction * total) or free[:1]
    train_groups = [group for group in all_groups if group not in test_groups and group not in eval_groups]
    if parsed and not train_groups:
        raise SplitError(f"No speakers left for training ({len(all_groups)} in the corpus); lower the fractions or list fewer speakers.")

    assignment = {group: "test" for group in test_groups} | {group: "eval" for group in eval_groups}
    parts: dict[str, list[Clip]] = {name: [] for name in SPLIT_NAMES}
    for clip in parsed:
        parts[assignment.get(group_of(clip), "train")].append(clip)
    if unparsed:
        logger.warning("Splitting %d clip(s) without a parsable speaker at random (--allow_random_fallback).", len(unparsed))
        train, evaluation, test = random_split(unparsed, eval_fraction, test_fraction, seed)
        parts["train"] += train
        parts["eval"] += evaluation
        parts["test"] += test
    return Split(
        strategy="speaker",
        train=parts["train"],
        eval=parts["eval"],
        test=parts["test"],
        speakers={"train": train_groups, "eval": sorted(eval_groups), "test": sorted(test_groups)},
        random_fallback_clips=len(unparsed),
    )


def make_split(
    clips: Sequence[Clip],
    strategy: str = "speaker",
    eval_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    eval_speakers: Sequence[str] = (),
    test_speakers: Sequence[str] = (),
    allow_random_fallback: bool = False,
) -> Split:
    """``strategy="speaker"`` (default) or ``"random"`` (clip level, as in the thesis)."""
    if strategy == "random":
        if eval_speakers or test_speakers:
            raise SplitError("--test_speakers / --eval_speakers need --split speaker.")
        train, evaluation, test = random_split(clips, eval_fraction, test_fraction, seed)
        return Split(strategy="random", train=train, eval=evaluation, test=test)
    if strategy != "speaker":
        raise SplitError(f"Unknown split strategy {strategy!r}; use one of {', '.join(SPLIT_STRATEGIES)}.")
    return speaker_split(clips, eval_fraction, test_fraction, seed, eval_speakers, test_speakers, allow_random_fallback)
