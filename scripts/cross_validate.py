"""Speaker-fold cross-validation of a train.py recipe, for choosing a recipe without its test set.

Each fold trains ``train.py CONFIG`` with one group of speakers as its test split and the
``--exclude_speakers`` (the final test speakers) left out entirely, then the folds' ``metrics.json``
files are pooled into ``cv.json``. Extra train.py flags after ``--`` apply to every fold.

    python -m scripts.cross_validate configs/bundled_model.json --output_dir runs/cv/baseline \\
        -- --config_overrides ensemble_size=1

Defaults are the RAVDESS-only protocol: RAVDESS actors 1-20 in five folds of four actors, with
actors 21-24 (its test set) never used.

Leave-one-corpus-out (``--folds loco:ravdess,emodb,nemo``): each fold holds out one whole training
corpus (train.py ``--test_corpora``) and trains on the others, so the score says how the recipe does on a
corpus, language and recording setup it has never heard. The selection score is the mean single-clip
accuracy over the held-out corpora (``mean_accuracy`` in cv.json); ``--metrics_file
metrics_corpus_adapted.json`` pools the same folds scored with each held-out corpus's own statistics.

    python -m scripts.cross_validate configs/multicorpus_model.json --output_dir runs/cv/loco \
        --folds loco:ravdess,emodb,nemo --exclude_speakers ravdess:21,ravdess:22,ravdess:23,ravdess:24
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

logger = logging.getLogger("cross_validate")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDS = "1-4;5-8;9-12;13-16;17-20"
DEFAULT_EXCLUDED = "21,22,23,24"


#: ``--folds loco:a,b,c``: one fold per named corpus, held out whole.
LOCO_PREFIX = "loco:"


def parse_corpus_folds(spec: str) -> list[str] | None:
    """``"loco:ravdess,emodb,nemo"`` -> ``["ravdess", "emodb", "nemo"]`` (one held-out corpus per fold);
    ``None`` for speaker folds."""
    if not spec.startswith(LOCO_PREFIX):
        return None
    corpora = [name.strip().lower() for name in spec[len(LOCO_PREFIX) :].split(",") if name.strip()]
    if not corpora or len(set(corpora)) != len(corpora):
        raise ValueError(f"leave-one-corpus-out needs one or more different corpora, got {spec!r}")
    return corpora


def parse_folds(spec: str) -> list[list[str]]:
    """``"1-4;5,7"`` -> ``[["1", "2", "3", "4"], ["5", "7"]]``: folds split by ``;``, ranges inclusive;
    ``"ravdess:1-2"`` -> ``[["ravdess:1", "ravdess:2"]]``."""
    folds = []
    for fold_spec in (part.strip() for part in spec.split(";")):
        if not fold_spec:
            continue
        speakers: list[str] = []
        for item in (part.strip() for part in fold_spec.split(",")):
            # "ravdess:1-4" keeps its corpus on every speaker of the range (ids collide across corpora).
            corpus, colon, rest = item.rpartition(":")
            low, dash, high = rest.partition("-")
            if dash and low.isdigit() and high.isdigit():
                speakers.extend(f"{corpus}{colon}{number}" for number in range(int(low), int(high) + 1))
            elif item:
                speakers.append(item)
        folds.append(speakers)
    if len(folds) < 2:
        raise ValueError(f"cross-validation needs at least two folds, got {spec!r}")
    return folds


def fold_command(config: str, speakers: list[str], excluded: str, output_dir: Path, extra: list[str], corpus: str | None = None) -> list[str]:
    """train.py for one fold: ``speakers`` held out as its test split, or the whole ``corpus``."""
    # A held-out corpus is the whole test split: a test speaker list from the config is dropped.
    held_out = ["--test_corpora", corpus, "--test_speakers", ""] if corpus else ["--test_speakers", ",".join(speakers)]
    command = [sys.executable, str(REPO_ROOT / "train.py"), config, *held_out]
    if excluded:
        command += ["--exclude_speakers", excluded]
    # Folds keep no checkpoints: only their metrics matter.
    return command + ["--output_dir", str(output_dir), "--save_strategy", "no", *extra]


# config.json keys that say nothing about the recipe.
_BOOKKEEPING_KEYS = {"id2label", "label2id", "architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path"}


def recipe_config(config: dict) -> dict:
    """A config.json (as loaded) without label maps and version bookkeeping: what the model is."""
    return {key: value for key, value in config.items() if key not in _BOOKKEEPING_KEYS}


#: train.py settings that make up a recipe (the split, output and bookkeeping flags are left out).
RECIPE_TRAINING_KEYS = (
    "num_train_epochs", "max_steps", "learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "label_smoothing_factor",
)  # fmt: skip
_NOT_RECIPE_DATA_KEYS = {
    "data_dir", "test_speakers", "eval_speakers", "exclude_speakers", "test_fraction", "eval_fraction", "split_seed", "max_eval_samples",
    "test_corpora", "embedding_cache_dir",
}  # fmt: skip
#: train.py model flags that are part of a recipe (how the head is fitted, which blocks are fine-tuned).
RECIPE_MODEL_KEYS = ("head_solver", "l2_C", "trainable_encoder_layers", "head_learning_rate", "corpus_adversarial_weight")


def recipe_arguments(train_config: dict) -> dict:
    """A train_config.json (as loaded) reduced to the recipe: data and augmentation flags, the head's
    solver, optimiser, epochs."""
    data = {key: value for key, value in train_config["data"].items() if key not in _NOT_RECIPE_DATA_KEYS}
    model = {key: train_config.get("model", {})[key] for key in RECIPE_MODEL_KEYS if key in train_config.get("model", {})}
    training = {key: train_config["training"][key] for key in RECIPE_TRAINING_KEYS if key in train_config["training"]}
    return data | model | training


def recipe_defaults() -> dict:
    """The defaults of train.py's recipe flags: a recipe recorded before a flag existed ran with its default."""
    from dataclasses import MISSING, fields

    from transformers import TrainingArguments

    from ser.training.arguments import DataArguments, ModelArguments

    def defaults(arguments_class) -> dict:
        return {field.name: field.default for field in fields(arguments_class) if field.default is not MISSING}

    return recipe_arguments({"data": defaults(DataArguments), "model": defaults(ModelArguments), "training": defaults(TrainingArguments)})


def model_config_defaults(model_type: str | None) -> dict:
    """The defaults of a model type's config: a config saved before an option existed loads with its default."""
    if model_type is None:
        return {}
    from transformers import AutoConfig

    import ser.models  # noqa: F401  (registers emotion_cnn with the Auto classes)

    return recipe_config(AutoConfig.for_model(model_type).to_dict())


def pool_folds(fold_metrics: list[dict]) -> dict:
    """Per-fold scores plus their mean/std and the accuracy over all held-out clips together."""
    accuracies = np.array([metrics["accuracy"] for metrics in fold_metrics])
    macro_f1 = np.array([metrics["macro_f1"] for metrics in fold_metrics])
    correct = sum(float(np.trace(np.asarray(metrics["confusion_matrix"]))) for metrics in fold_metrics)
    total = sum(metrics["n"] for metrics in fold_metrics)
    return {
        "mean_accuracy": round(float(accuracies.mean()), 4),
        "std_accuracy": round(float(accuracies.std(ddof=1)), 4),
        "mean_macro_f1": round(float(macro_f1.mean()), 4),
        "pooled_accuracy": round(correct / total, 4),
        "n": total,
        "folds": [
            {"speakers": metrics["speakers"], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"]}
            | ({"held_out_corpus": metrics["held_out_corpus"]} if "held_out_corpus" in metrics else {})
            for metrics in fold_metrics
        ],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        split_at = argv.index("--")
        argv, extra = argv[:split_at], argv[split_at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="train.py JSON config (its data_dir and recipe are used; its test split is replaced per fold).")
    parser.add_argument("--output_dir", required=True, help="One sub-folder per fold, plus cv.json.")
    parser.add_argument(
        "--folds",
        default=DEFAULT_FOLDS,
        help="Speaker folds separated by ';', e.g. '1-4;5-8'; or 'loco:ravdess,emodb,nemo': one fold per corpus, held out whole (leave-one-corpus-out).",
    )
    parser.add_argument("--exclude_speakers", default=DEFAULT_EXCLUDED, help="Speakers no fold trains or tests on ('' for none).")
    parser.add_argument("--jobs", type=int, default=1, help="Folds trained at once; the CPU threads are shared between them.")
    parser.add_argument("--pool_only", action="store_true", help="Do not train: pool the folds already in --output_dir again.")
    parser.add_argument(
        "--metrics_file",
        default="metrics.json",
        help="The per-fold file to pool, e.g. metrics_speaker_adapted.json (frozen-encoder models: each test speaker's own statistics); written to cv.json, or cv_<file stem>.json for another file.",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)

    held_out_corpora = parse_corpus_folds(args.folds)
    folds = [[] for _ in held_out_corpora] if held_out_corpora else parse_folds(args.folds)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // max(1, args.jobs)))
    environment = dict(os.environ, OMP_NUM_THREADS=threads)

    def run_fold(index: int) -> dict:
        metrics = train_fold(index)
        return metrics | ({"held_out_corpus": held_out_corpora[index]} if held_out_corpora else {})

    def train_fold(index: int) -> dict:
        fold_dir = output_dir / f"fold_{index}"
        if args.pool_only:
            return json.loads((fold_dir / args.metrics_file).read_text())
        corpus = held_out_corpora[index] if held_out_corpora else None
        command = fold_command(args.config, folds[index], args.exclude_speakers, fold_dir, extra, corpus)
        logger.info("fold %d: %s", index, " ".join(command))
        fold_dir.mkdir(parents=True, exist_ok=True)
        with open(fold_dir / "train.log", "w") as log:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=REPO_ROOT)
        if result.returncode != 0:
            raise RuntimeError(f"fold {index} failed (exit {result.returncode}); see {fold_dir / 'train.log'}")
        metrics = json.loads((fold_dir / args.metrics_file).read_text())
        logger.info("fold %d (%s): accuracy %.3f", index, corpus or ",".join(folds[index]), metrics["accuracy"])
        return metrics

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        fold_metrics = list(pool.map(run_fold, range(len(folds))))
    fold_dirs = [output_dir / f"fold_{index}" for index in range(len(folds))]
    configs = [recipe_config(json.loads((fold_dir / "config.json").read_text())) for fold_dir in fold_dirs]
    recipes = [recipe_arguments(json.loads((fold_dir / "train_config.json").read_text())) for fold_dir in fold_dirs]
    if any(config != configs[0] for config in configs) or any(recipe != recipes[0] for recipe in recipes):
        raise RuntimeError(f"The folds in {output_dir} were trained with different recipes; train them again.")
    command_arguments = [argument for argument in argv if argument != "--pool_only"]
    summary = pool_folds(fold_metrics) | {
        "config": args.config,
        "extra_arguments": extra,
        "excluded_speakers": args.exclude_speakers,
        "folds_spec": args.folds,
        "model_config": configs[0],
        "recipe": recipes[0],
        "command": " ".join(["python -m scripts.cross_validate", *command_arguments, *(["--", *extra] if extra else [])]),
    }
    summary_name = "cv.json" if args.metrics_file == "metrics.json" else f"cv_{Path(args.metrics_file).stem}.json"
    (output_dir / summary_name).write_text(json.dumps(summary, indent=2) + "\n")
    logger.info(
        "%d folds: accuracy %.3f ± %.3f (pooled %.3f over %d clips) -> %s",
        len(folds), summary["mean_accuracy"], summary["std_accuracy"], summary["pooled_accuracy"], summary["n"], output_dir / summary_name,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
