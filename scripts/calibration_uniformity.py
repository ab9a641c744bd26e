"""When calibration cannot help: choosing ``ser.inference.adaptation.MAX_DOMINANT_SHARE`` on held-out corpora.

    python -m scripts.calibration_uniformity --folds runs/cv-loco/adapted_head_layers234_noise_mixup2 \
        --output models/ser-multicorpus/cv/calibration_uniformity.json

For each leave-one-corpus-out fold (a model that never heard the held-out corpus), each held-out speaker
gets calibration sets of ``--clips`` of their clips, ``--draws`` times: **mixed** sets (drawn from all of
the speaker's clips, what a visitor who talks naturally gives) and **uniform** sets (all of one emotion,
what "ten sad clips" gives). Each set is scored as calibration would use it: its statistics standardise
the speaker's *other* clips (the adapted head answers), against the single-clip answers of the same
clips. The dominant share of a set (the largest mean single-clip probability of one class over its
clips, no labels) decides whether calibration is used. For each threshold the script reports how often
each kind of set is refused and the accuracy gained over single clip when sets over the threshold are
refused. The chosen threshold maximises the mean gain over the two kinds among the thresholds that
refuse at most ``--max_mixed_refused`` (10%) of the mixed sets: a check that turned calibration off for
most visitors who speak naturally would be no calibration at all. Labels are only used to score.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger("calibration_uniformity")

THRESHOLDS = [round(value, 2) for value in np.arange(0.30, 0.91, 0.05)]


class _LazyWaveforms:
    """Decode a clip only if the embedding cache lacks it."""

    def __init__(self, paths: list[str], sample_rate: int):
        self.paths, self.sample_rate = paths, sample_rate

    def __getitem__(self, index: int) -> np.ndarray:
        from ser.audio.loader import load_audio

        return load_audio(self.paths[index], self.sample_rate)

    def __len__(self) -> int:
        return len(self.paths)


def fold_sets(classifier, model, feature_extractor, clips, cache, clips_per_set: int, draws: int, seed: int) -> list[dict]:
    """Every calibration set of one fold's held-out speakers: kind, dominant share, and the accuracy of the
    speaker's other clips single clip and calibrated with it."""
    from ser.core.statistics import EmbeddingStatistics
    from ser.inference.adaptation import dominant_answer
    from ser.inference.embeddings import ORIGINAL, cached_embeddings

    paths = [clip.path for clip in clips]
    embeddings = cached_embeddings(model, feature_extractor, paths, _LazyWaveforms(paths, classifier.sample_rate), ORIGINAL, cache)
    single = classifier.probabilities_from_embeddings(embeddings)
    y = np.array([classifier.labels.index(clip.label) for clip in clips])
    speakers = np.array([f"{clip.corpus}:{clip.speaker}" for clip in clips])
    rng = np.random.default_rng(seed)
    sets = []
    for speaker in np.unique(speakers):
        rows = np.flatnonzero(speakers == speaker)
        candidates = [("mixed", rows)] + [("uniform", rows[y[rows] == label]) for label in np.unique(y[rows])]
        for kind, pool in candidates:
            if len(pool) < min(clips_per_set, 8) or len(rows) - min(clips_per_set, len(pool)) < 5:
                continue
            for _ in range(draws):
                drawn = rng.choice(pool, size=min(clips_per_set, len(pool)), replace=False)
                others = np.setdiff1d(rows, drawn)
                calibrated = classifier.probabilities_from_embeddings(embeddings[others], EmbeddingStatistics.of(embeddings[drawn]))
                sets.append({
                    "kind": kind,
                    "share": dominant_answer(single[drawn])[1],
                    "single": float((single[others].argmax(1) == y[others]).mean()),
                    "calibrated": float((calibrated.argmax(1) == y[others]).mean()),
                })  # fmt: skip
    return sets


#: The largest share of mixed (natural) calibration sets the chosen threshold may refuse.
MAX_MIXED_REFUSED = 0.10


def summarise(sets: list[dict], max_mixed_refused: float = MAX_MIXED_REFUSED) -> dict:
    by_threshold = {}
    for threshold in THRESHOLDS:
        row = {}
        for kind in ("mixed", "uniform"):
            chosen = [item for item in sets if item["kind"] == kind]
            refused = [item["share"] > threshold for item in chosen]
            guarded = [item["single"] if refuse else item["calibrated"] for item, refuse in zip(chosen, refused)]
            row[kind] = {
                "refused": round(float(np.mean(refused)), 4),
                "gain_over_single": round(float(np.mean(guarded) - np.mean([item["single"] for item in chosen])), 4),
            }
        row["mean_gain"] = round((row["mixed"]["gain_over_single"] + row["uniform"]["gain_over_single"]) / 2, 4)
        by_threshold[f"{threshold:.2f}"] = row
    unguarded = {
        kind: round(float(np.mean([item["calibrated"] - item["single"] for item in sets if item["kind"] == kind])), 4) for kind in ("mixed", "uniform")
    }
    allowed = [key for key in by_threshold if by_threshold[key]["mixed"]["refused"] <= max_mixed_refused]
    best = max(allowed, key=lambda key: by_threshold[key]["mean_gain"]) if allowed else None
    return {"sets": {kind: sum(item["kind"] == kind for item in sets) for kind in ("mixed", "uniform")},
            "gain_without_the_check": unguarded, "by_threshold": by_threshold, "max_mixed_refused": max_mixed_refused,
            "chosen_threshold": None if best is None else float(best)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    from ser.evaluation.selection import select_clips
    from ser.inference.embeddings import EmbeddingCache
    from ser.inference.predictor import EmotionClassifier

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", required=True, help="A scripts.cross_validate --folds loco:... output folder (fold_0, fold_1, ...).")
    parser.add_argument("--output", required=True, help="JSON file to write.")
    parser.add_argument("--embedding_cache_dir", default="runs/embedding_cache")
    parser.add_argument("--clips", type=int, default=10, help="Clips per calibration set.")
    parser.add_argument("--draws", type=int, default=5, help="Draws per speaker and kind of set.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_mixed_refused", type=float, default=MAX_MIXED_REFUSED, help="The largest share of mixed sets the chosen threshold may refuse.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cache = EmbeddingCache(args.embedding_cache_dir)
    sets: list[dict] = []
    folds = sorted(Path(args.folds).glob("fold_*"))
    for fold in folds:
        train_config = json.loads((fold / "train_config.json").read_text())
        held_out = train_config["data"]["test_corpora"]
        data_dir = next(path for path in train_config["data"]["data_dir"] if Path(path).name.lower() == held_out)
        classifier = EmotionClassifier.from_pretrained(str(fold), backend="torch", release_model=False)
        model = classifier.model.model  # the UtteranceEmbedder's WhisperSer: the embedding cache's fingerprints
        clips = [clip for clip in select_clips(data_dir, classifier.labels).clips if clip.speaker is not None]
        fold_result = fold_sets(classifier, model, classifier.feature_extractor, clips, cache, args.clips, args.draws, args.seed)
        logger.info("%s (held out %s): %d calibration sets", fold.name, held_out, len(fold_result))
        sets.extend(fold_result)
    result = {"folds": args.folds, "clips_per_set": args.clips, "draws": args.draws, **summarise(sets, args.max_mixed_refused)}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("sets", "gain_without_the_check", "chosen_threshold")}))
    print(json.dumps(result["by_threshold"], indent=1))
    return result


if __name__ == "__main__":
    main()
