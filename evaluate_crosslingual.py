"""Score a trained emotion model on a corpus in another language (AESDD, EMOVO) or on held-out RAVDESS actors.

    python evaluate_crosslingual.py --model runs/w2v2-base --data_dir /path/to/AESDD --output_dir eval/aesdd
    python evaluate_crosslingual.py --data_dir ../shared/data/ravdess --speakers 21,22,23,24 --output_dir eval/ravdess-test

Writes metrics.json, predictions.csv, confusion_matrix.{csv,png}, coverage.{csv,png} and report.md to
--output_dir; --snr_db 20,10,5,0 adds accuracy under white noise at each SNR.
All the work is in ser.evaluation.corpus_evaluation; this file only parses arguments and loads the model.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ser.core.labels import DEFAULT_EXCLUDED_LABELS, parse_label_map
from ser.data.corpus import CorpusError
from ser.evaluation.corpus_evaluation import evaluate_corpus
from ser.evaluation.reports import CONFUSION_PNG_FILE, REPORT_FILE
from ser.evaluation.robustness import parse_snr_list
from ser.evaluation.selection import parse_label_list, parse_speakers
from ser.inference.adaptation import ADAPT_MODES, AdaptationUnsupportedError
from ser.inference.predictor import EmotionClassifier, ModelNotConfiguredError
from ser.inference.quality import DEFAULT_CONFIDENCE_THRESHOLD, QualityConfig

logger = logging.getLogger("evaluate_crosslingual")


@dataclass
class EvaluationArguments:
    data_dir: str = field(metadata={"help": "Corpus with one folder per class: AESDD/EMOVO (anger, disgust, ...) or Audio Emotions (Emotions/Angry, ...)."})
    output_dir: str = field(metadata={"help": "Where metrics.json, predictions.csv, confusion_matrix.{csv,png} and report.md are written."})
    model: str | None = field(
        default=None, metadata={"help": "Local model folder or hub id; default: $SER_MODEL, else the bundled models/ser-multicorpus."}
    )
    backend: str | None = field(
        default=None, metadata={"help": "Serving backend: auto, torch (fp32 reference), onnx, onnx-int8, bf16, cuda. Default: $SER_BACKEND, else auto: the fastest that agrees with torch on this machine (docs/backends.md)."}
    )
    label_map: str | None = field(
        default=None, metadata={"help": "Extra folder -> label mapping, JSON or 'folder=label,...' (e.g. 'rabbia=angry,gioia=happy')."}
    )
    speakers: str | None = field(default=None, metadata={"help": "Keep only these speakers, comma-separated (e.g. RAVDESS actors '21,22,23,24')."})
    exclude_labels: str = field(
        default=",".join(DEFAULT_EXCLUDED_LABELS), metadata={"help": "Classes left out, comma-separated; '' keeps every class."}
    )
    batch_size: int = field(default=8, metadata={"help": "Clips per forward pass."})
    bootstrap_resamples: int = field(default=1000, metadata={"help": "Bootstrap resamples for the 95%% confidence intervals."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    quality_gate: bool = field(
        default=True, metadata={"help": "Report which clips the app's quality gate would refuse, by reason (all are still scored)."}
    )
    confidence_threshold: float = field(
        default=DEFAULT_CONFIDENCE_THRESHOLD, metadata={"help": "Threshold marked in coverage.png / report.md (answers below it are 'uncertain')."}
    )
    snr_db: str = field(default="", metadata={"help": "Also score with white noise at these SNRs in dB, e.g. '20,10,5,0' (noise_robustness)."})
    noise_seed: int = field(default=0, metadata={"help": "Seed of the added noise (clip i uses default_rng([seed, i]))."})
    adapt: str = field(
        default="none",
        metadata={
            "help": "Standardisation statistics: none (the training set's, as a single clip gets), corpus (computed from all clips "
            "scored), speaker (per speaker parsed from the file names; clips without one, or whose speaker has too few clips, get the "
            "corpus's). No labels are used, but the test clips are seen. Needs a model with an embedding (WhisperSer).",
            "choices": list(ADAPT_MODES),
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR."})


def load_classifier(args: EvaluationArguments) -> EmotionClassifier:
    """The single place the model is created; ``--backend`` picks how it runs."""
    return EmotionClassifier.from_pretrained(args.model, backend=args.backend)


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(EvaluationArguments).parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started_at = time.perf_counter()
    try:
        label_map = parse_label_map(args.label_map)
    except ValueError as error:  # bad JSON or a pair without '='
        sys.exit(f"error: --label_map: {error}")
    try:
        snr_db = parse_snr_list(args.snr_db)
    except ValueError as error:
        sys.exit(f"error: --snr_db: {error}")
    try:
        classifier = load_classifier(args)
        metrics = evaluate_corpus(
            classifier,
            data_dir=args.data_dir,
            output_dir=args.output_dir,
            label_map=label_map,
            exclude_labels=parse_label_list(args.exclude_labels),
            speakers=parse_speakers(args.speakers),
            batch_size=args.batch_size,
            n_resamples=args.bootstrap_resamples,
            seed=args.seed,
            progress=args.progress,
            started_at=started_at,
            quality=QualityConfig() if args.quality_gate else None,
            confidence_threshold=args.confidence_threshold,
            snr_db=snr_db,
            noise_seed=args.noise_seed,
            adapt=args.adapt,
        )
    except (ModelNotConfiguredError, CorpusError, AdaptationUnsupportedError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        # transformers explains a missing folder / unreachable hub id over several lines; the first says it.
        sys.exit(f"error: cannot load model {args.model!r}: {str(error).strip().splitlines()[0]}")
    restricted = metrics["restricted"]
    print(
        f"{metrics['n']} clips ({len(metrics['unreadable'])} unreadable, {len(metrics['skipped_folders'])} folders skipped), adapt {args.adapt}: "
        f"open accuracy {metrics['accuracy']:.3f} [{metrics['ci95']['accuracy'][0]:.3f}, {metrics['ci95']['accuracy'][1]:.3f}], "
        f"macro-F1 {metrics['macro_f1']:.3f}, UAR {metrics['uar']:.3f}; "
        f"restricted accuracy {restricted['accuracy']:.3f}, macro-F1 {restricted['macro_f1']:.3f}; "
        f"{metrics['wall_time_s']:.1f} s. Report: {args.output_dir}/{REPORT_FILE}, plot: {args.output_dir}/{CONFUSION_PNG_FILE}"
    )
    if args.adapt == "speaker":
        adaptation = metrics["adaptation"]
        print(
            f"Speaker adaptation: {len(adaptation['speakers'])} speakers with their own statistics; "
            f"{adaptation['fallback_to_corpus_clips']} clips got the corpus statistics instead ({adaptation['fallback_reasons'] or 'none'})."
        )
    return metrics


if __name__ == "__main__":
    main()
