"""ser.data.splits: speaker-independent and random splits, with exact expectations."""

from __future__ import annotations

import pytest
from sklearn.model_selection import train_test_split

from ser.data.corpus import Clip, scan_corpus
from ser.data.splits import (
    SplitError,
    group_of,
    make_split,
    parse_speaker_list,
    random_split,
)
from tests.conftest import SHARED_DATA

LABELS = ("angry", "disgusted", "fearful", "happy", "neutral", "sad")


def _clips(corpus: str, speakers, per_speaker: int = 6) -> list[Clip]:
    return [
        Clip(path=f"/{corpus}/{speaker}/{index}.wav", label=LABELS[index % len(LABELS)], speaker=str(speaker), corpus=corpus)
        for speaker in speakers
        for index in range(per_speaker)
    ]


def _groups(clips) -> set:
    return {group_of(clip) for clip in clips}


def test_speaker_split_sizes_are_whole_speakers_and_disjoint():
    clips = _clips("ravdess", range(1, 11), per_speaker=10)
    split = make_split(clips, eval_fraction=0.1, test_fraction=0.2, seed=0)
    assert (len(split.train), len(split.eval), len(split.test)) == (70, 10, 20)
    assert (len(_groups(split.train)), len(_groups(split.eval)), len(_groups(split.test))) == (7, 1, 2)
    assert not (_groups(split.train) & _groups(split.test)) and not (_groups(split.train) & _groups(split.eval))
    assert not (_groups(split.eval) & _groups(split.test))
    assert sorted(split.train + split.eval + split.test, key=lambda clip: clip.path) == sorted(clips, key=lambda clip: clip.path)
    # Seeded: the same call gives the same split; the groups it records are the clips' groups.
    again = make_split(clips, eval_fraction=0.1, test_fraction=0.2, seed=0)
    assert again.speakers == split.speakers
    assert set(split.speakers["test"]) == _groups(split.test)


def test_speaker_split_seed_changes_which_speakers():
    clips = _clips("ravdess", range(1, 25))
    tests = {tuple(make_split(clips, seed=seed).speakers["test"]) for seed in range(5)}
    assert len(tests) > 1


def test_greedy_pick_skips_a_group_that_would_overshoot():
    # One huge speaker (TESS-like) and ten small ones: 20% of 200 clips is 40 -> four small speakers, never the big one.
    clips = _clips("tess", ["oaf"], per_speaker=100) + _clips("crema-d", range(1001, 1011), per_speaker=10)
    split = make_split(clips, eval_fraction=0.0, test_fraction=0.2, seed=3)
    assert len(split.test) == 40
    assert ("tess", "oaf") in _groups(split.train)


def test_explicit_speakers_exact():
    clips = _clips("ravdess", range(1, 25))
    split = make_split(clips, test_speakers=parse_speaker_list("21,22,23,24"), eval_speakers=parse_speaker_list("17, 18,19,20"))
    assert split.speakers["test"] == [("ravdess", "21"), ("ravdess", "22"), ("ravdess", "23"), ("ravdess", "24")]
    assert split.speakers["eval"] == [("ravdess", "17"), ("ravdess", "18"), ("ravdess", "19"), ("ravdess", "20")]
    assert _groups(split.train) == {("ravdess", str(actor)) for actor in range(1, 17)}
    assert (len(split.train), len(split.eval), len(split.test)) == (96, 24, 24)


def test_explicit_test_speakers_with_fraction_for_eval():
    clips = _clips("ravdess", range(1, 11), per_speaker=10)
    split = make_split(clips, test_speakers=["1"], eval_fraction=0.2, seed=0)
    assert split.speakers["test"] == [("ravdess", "1")]
    assert len(split.eval) == 20 and ("ravdess", "1") not in _groups(split.eval)


def test_colliding_ids_across_corpora_are_separate_groups():
    clips = _clips("ravdess", [1, 2, 3]) + _clips("aesdd", [1, 2, 3])
    with pytest.raises(SplitError, match="several corpora.*corpus:id"):
        make_split(clips, test_speakers=["1"])
    split = make_split(clips, test_speakers=["ravdess:1"], eval_speakers=["aesdd:1"])
    assert split.speakers["test"] == [("ravdess", "1")]
    assert split.speakers["eval"] == [("aesdd", "1")]
    assert {clip.corpus for clip in split.test} == {"ravdess"}
    assert len(split.train) == 4 * 6


def test_savee_bare_names_never_straddle_splits():
    savee = [Clip(f"/savee/{letter}{index:02d}.wav", "angry", "savee", "savee") for letter in "adfhn" for index in range(1, 4)]
    clips = savee + _clips("ravdess", range(1, 6), per_speaker=3)
    for seed in range(6):
        split = make_split(clips, eval_fraction=0.2, test_fraction=0.2, seed=seed)
        holding = [name for name, part in split.parts().items() if any(clip.corpus == "savee" for clip in part)]
        assert len(holding) == 1
        assert sum(clip.corpus == "savee" for clip in split.parts()[holding[0]]) == 15


def test_unparsed_speakers_error_lists_examples_unless_fallback():
    clips = _clips("ravdess", range(1, 6)) + [Clip(f"/x/mystery_{index}.wav", "sad", None, None) for index in range(7)]
    with pytest.raises(SplitError, match=r"(?s)7 clip\(s\).*mystery_0\.wav.*--allow_random_fallback") as error:
        make_split(clips)
    assert "mystery_5.wav" not in str(error.value)  # at most five examples
    split = make_split(clips, allow_random_fallback=True, eval_fraction=0.0, test_fraction=0.2, seed=0)
    assert split.random_fallback_clips == 7
    assert sum(clip.speaker is None for clip in split.train + split.test) == 7
    assert sum(clip.speaker is None for clip in split.test) == 2  # round(0.2 * 7) by train_test_split (ceil)


def test_unknown_speaker_and_bad_fractions():
    clips = _clips("ravdess", range(1, 6))
    with pytest.raises(SplitError, match="'99' is not in the corpus.*ravdess:1"):
        make_split(clips, test_speakers=["99"])
    with pytest.raises(SplitError, match="sum to < 1"):
        make_split(clips, eval_fraction=0.5, test_fraction=0.5)
    with pytest.raises(SplitError, match="both"):
        make_split(clips, test_speakers=["1"], eval_speakers=["1"])
    with pytest.raises(SplitError, match="No speakers left"):
        make_split(clips, test_speakers=["1", "2", "3"], eval_speakers=["4", "5"])


def test_random_split_is_sklearn_80_20_and_eval_does_not_move_test():
    clips = _clips("ravdess", range(1, 11), per_speaker=10)
    expected_train, expected_test = train_test_split(clips, test_size=0.2, random_state=0)
    train, evaluation, test = random_split(clips, eval_fraction=0.0, test_fraction=0.2, seed=0)
    assert (train, evaluation, test) == (expected_train, [], expected_test)
    split = make_split(clips, strategy="random", eval_fraction=0.1, test_fraction=0.2, seed=0)
    assert split.test == expected_test
    assert (len(split.train), len(split.eval)) == (70, 10)
    assert set(clip.path for clip in split.train + split.eval) == set(clip.path for clip in expected_train)
    with pytest.raises(SplitError, match="need --split speaker"):
        make_split(clips, strategy="random", test_speakers=["1"])


def test_parse_speaker_list_normalises():
    assert parse_speaker_list("07, ravdess:08,F1,,") == ["7", "ravdess:8", "f1"]
    assert parse_speaker_list(["21,22", "CREMA-D:1001"]) == ["21", "22", "crema-d:1001"]
    assert parse_speaker_list(None) == []


def test_summary_counts():
    clips = _clips("ravdess", range(1, 5))
    summary = make_split(clips, test_speakers=["4"], eval_speakers=["3"]).summary()
    assert summary["test"] == {"num_clips": 6, "label_counts": {label: 1 for label in LABELS}, "speakers": ["ravdess:4"]}
    assert summary["train"]["speakers"] == ["ravdess:1", "ravdess:2"]


def test_generated_audio_emotions_corpus_splits_by_speaker(audio_emotions_dir):
    corpus = scan_corpus(audio_emotions_dir, exclude_labels=["surprised"])
    split = make_split(corpus.clips, seed=0)
    seen = {}
    for name, part in split.parts().items():
        for group in _groups(part):
            assert seen.setdefault(group, name) == name
    # 6 RAVDESS actors + 2 CREMA-D + TESS OAF/YAF + one SAVEE group.
    assert len(seen) == 11


RAVDESS = SHARED_DATA / "ravdess"


@pytest.mark.skipif(not RAVDESS.is_dir(), reason="shared RAVDESS copy not present")
def test_shared_ravdess_speaker_split():
    corpus = scan_corpus(RAVDESS, exclude_labels=["surprised"])
    assert corpus.labels == list(LABELS)
    assert corpus.unparsed_speaker_files() == []
    split = make_split(corpus.clips, test_speakers=parse_speaker_list("21,22,23,24"), eval_speakers=parse_speaker_list("17,18,19,20"))
    assert _groups(split.train) == {("ravdess", str(actor)) for actor in range(1, 17)}
    per_actor = len(corpus.clips) // 24
    assert (len(split.train), len(split.eval), len(split.test)) == (16 * per_actor, 4 * per_actor, 4 * per_actor)
