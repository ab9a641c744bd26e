"""How many of a speaker's clips the statistics need: accuracy against the number of clips they come from.

    python -m scripts.adaptation_curve --model runs/my-model --data_dir ../shared/data/ravdess \
        --speakers 17,18,19,20 --output runs/my-model/adaptation_curve.json

For each speaker, ``--draws`` times, statistics are computed from ``k`` of the speaker's clips drawn at
random (no labels) and all of the speaker's clips are scored with them; the open accuracy is averaged
over draws and speakers, for each ``k``. Also scored: ``none`` (training statistics), ``corpus`` and
``speaker`` (all of the speaker's clips), as ``evaluate_crosslingual.py --adapt`` does. The smallest
``k`` at which the curve reaches ``none`` is what ``ser.inference.adaptation.MIN_ADAPTATION_CLIPS`` is about.
Choose it on speakers the model was not trained on and that are not a reported test set.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger("adaptation_curve")


@dataclass
class CurveArguments:
    data_dir: str = field(metadata={"help": "Corpus with one folder per class (as evaluate_crosslingual.py)."})
    output: str = field(metadata={"help": "JSON file to write."})
    model: str | None = field(default=None, metadata={"help": "Model folder or hub id (default: $SER_MODEL, else the bundled model)."})
    speakers: str | None = field(default=None, metadata={"help": "Keep only these speakers, comma-separated."})
    clips: str = field(default="1,2,3,4,5,6,8,10,15,20,30", metadata={"help": "Numbers of clips k to draw the statistics from."})
    draws: int = field(default=20, metadata={"help": "Random draws per speaker and k."})
    seed: int = field(default=0, metadata={"help": "Seed of the draws."})
    backend: str | None = field(default=None, metadata={"help": "Serving backend (as everywhere)."})


def curve(embeddings: np.ndarray, y: np.ndarray, speakers: np.ndarray, classifier, ks: list[int], draws: int, seed: int) -> dict[str, float]:
    """``{str(k): mean open accuracy}`` (string keys: what the JSON holds)."""
    from ser.core.statistics import EmbeddingStatistics

    rng = np.random.default_rng(seed)
    result = {}
    for k in ks:
        accuracies = []
        for speaker in np.unique(speakers):
            rows = np.flatnonzero(speakers == speaker)
            for _ in range(draws):
                drawn = rng.choice(rows, size=min(k, len(rows)), replace=False)
                probabilities = classifier.probabilities_from_embeddings(embeddings[rows], EmbeddingStatistics.of(embeddings[drawn]))
                accuracies.append(float((probabilities.argmax(axis=1) == y[rows]).mean()))
        result[str(k)] = round(float(np.mean(accuracies)), 4)
    return result


def main(argv: list[str] | None = None) -> dict:
    from transformers import HfArgumentParser

    from ser.audio.loader import load_audio
    from ser.evaluation.selection import parse_speakers, select_clips
    from ser.inference.adaptation import adapted_probabilities, plan_adaptation
    from ser.inference.predictor import EmotionClassifier

    (args,) = HfArgumentParser(CurveArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    classifier = EmotionClassifier.from_pretrained(args.model, backend=args.backend)
    selection = select_clips(args.data_dir, classifier.labels, speakers=parse_speakers(args.speakers))
    clips = [clip for clip in selection.clips if clip.speaker is not None]
    logger.info("%d clips of %d speakers", len(clips), len({clip.speaker for clip in clips}))
    embeddings = np.concatenate([
        classifier.embed_batch([load_audio(clip.path, classifier.sample_rate) for clip in clips[start : start + 8]])
        for start in range(0, len(clips), 8)
    ])  # fmt: skip
    y = np.array([classifier.labels.index(clip.label) for clip in clips])
    speakers = np.array([f"{clip.corpus}:{clip.speaker}" for clip in clips])
    scores = {}
    for mode in ("none", "corpus", "speaker"):
        probabilities = adapted_probabilities(classifier, embeddings, plan_adaptation(embeddings, mode, list(speakers), min_clips=1))
        scores[mode] = round(float((probabilities.argmax(axis=1) == y).mean()), 4)
    ks = [int(item) for item in args.clips.split(",") if item.strip()]
    result = {
        "model": classifier.name,
        "data_dir": args.data_dir,
        "speakers": sorted(set(speakers.tolist())),
        "n": len(clips),
        "accuracy": scores,
        "accuracy_with_k_clips_of_the_speaker": curve(embeddings, y, speakers, classifier, ks, args.draws, args.seed),
        "draws": args.draws,
    }
    reached = [int(k) for k, accuracy in result["accuracy_with_k_clips_of_the_speaker"].items() if accuracy >= scores["none"]]
    result["smallest_k_reaching_none"] = min(reached) if reached else None
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("accuracy", "accuracy_with_k_clips_of_the_speaker", "smallest_k_reaching_none")}))
    return result


if __name__ == "__main__":
    main()
