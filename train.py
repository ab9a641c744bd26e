#!/usr/bin/env python
"""Fine-tune (or train from scratch) an audio-classification model for speech emotion recognition.

    python train.py --data_dir /path/to/audio-emotions --output_dir runs/w2v2-base \
        --model_name_or_path facebook/wav2vec2-base --num_train_epochs 10
    python train.py configs/bundled_model.json            # every flag from a JSON file
    python train.py configs/bundled_model.json --num_train_epochs 1   # ... with CLI overrides

Every transformers TrainingArguments flag works; see ``python train.py --help``. The held-out test
split is scored at the end and written to ``<output_dir>/metrics.json``.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ser import models as _register_models  # noqa: F401  (registers EmotionCnn with the Auto classes)
from ser.audio.loader import AudioError
from ser.core.labels import (
    label_maps,
)
from ser.data.corpus import Clip, CorpusError
from ser.data.splits import (
    SplitError,
)
from ser.training.arguments import DataArguments, ModelArguments, TrainSetupError, parse_arguments
from ser.training.frozen_encoder import embedding_datasets, frozen_embedding_model, set_training_statistics
from ser.training.setup import build_model, load_corpus_split, subset

logger = logging.getLogger("train")

#: Frozen-encoder models also score the test split with each test speaker's own statistics, here.
SPEAKER_ADAPTED_METRICS = "metrics_speaker_adapted.json"
#: ... and with each test corpus's own statistics (what evaluate_crosslingual.py --adapt corpus scores).
CORPUS_ADAPTED_METRICS = "metrics_corpus_adapted.json"

# -- outputs --------------------------------------------------------------------------------------
def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def run(data_args: DataArguments, model_args: ModelArguments, training_args, command: str) -> dict | None:
    """Scan, split, decode, train, score the test split; returns the test metrics (main process)."""
    import torch
    import transformers
    from transformers.trainer_utils import get_last_checkpoint

    from ser.core.metrics import classification_metrics
    from ser.training.card import format_model_card
    from ser.training.datasets import AudioCollator, ClipDataset, collate_embeddings, load_clips
    from ser.training.trainer import SerTrainer, allowed_classes, class_weights, corpus_class_weights, make_compute_metrics, sample_weights

    is_main = training_args.process_index == 0
    output_dir = Path(training_args.output_dir)
    seed = training_args.seed if data_args.split_seed is None else data_args.split_seed

    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "1", "yes"):
        resume = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if resume is None:
            raise TrainSetupError(f"--resume_from_checkpoint true: no checkpoint-* folder in {output_dir}.")
        logger.info("Resuming from %s", resume)
    elif resume is None and output_dir.is_dir() and get_last_checkpoint(str(output_dir)):
        logger.warning("%s already holds checkpoints; training starts afresh (pass --resume_from_checkpoint true to continue).", output_dir)

    labels, split = load_corpus_split(data_args, seed)
    split.train = subset(split.train, data_args.max_train_samples, seed)
    split.eval = subset(split.eval, data_args.max_eval_samples, seed)
    split.test = subset(split.test, data_args.max_eval_samples, seed)
    if not split.test:
        raise TrainSetupError("The test split is empty: set --test_fraction > 0 or --test_speakers.")

    model, feature_extractor = build_model(model_args, labels)
    sample_rate = int(feature_extractor.sampling_rate)
    if model_args.freeze_feature_encoder:
        if hasattr(model, "freeze_feature_encoder"):
            model.freeze_feature_encoder()
            logger.info("Froze the CNN feature encoder of %s.", type(model).__name__)
        else:
            logger.info("%s has no CNN feature encoder; nothing to freeze.", type(model).__name__)

    # Decode every clip once, before training: a bad file is skipped here, never mid-epoch.
    loaded = load_clips(split.train + split.eval + split.test, sample_rate)
    if loaded.failures:
        logger.warning("Skipped %d of %d clips that could not be decoded (listed in split.json).", len(loaded.failures), len(loaded.failures) + len(loaded.clips))
    waveform_of = {clip.path: waveform for clip, waveform in zip(loaded.clips, loaded.waveforms)}
    for name, clips in split.parts().items():
        setattr(split, name, [clip for clip in clips if clip.path in waveform_of])
    for name in ("train", "test"):
        if not getattr(split, name):
            raise TrainSetupError(f"No decodable clips left in the {name} split.")
    logger.info("Split (%s): train %d, eval %d, test %d clips", split.strategy, len(split.train), len(split.eval), len(split.test))

    label2id = label_maps(labels)[1]

    def training_extras(clips: list[Clip]) -> dict:
        """Per-clip loss weights (--class_balance corpus_class) and allowed classes (--mask_absent_classes)."""
        label_ids, corpora = [label2id[clip.label] for clip in clips], [clip.corpus for clip in clips]
        extras = {}
        if data_args.class_balance == "corpus_class":
            extras["loss_weights"] = corpus_class_weights(label_ids, corpora)
        if data_args.mask_absent_classes:
            extras["allowed_classes"] = allowed_classes(label_ids, corpora, len(labels))
        return extras

    def dataset(clips: list[Clip], train: bool) -> ClipDataset:
        return ClipDataset(
            [waveform_of[clip.path] for clip in clips],
            [label2id[clip.label] for clip in clips],
            sample_rate=sample_rate,
            max_duration_s=data_args.max_duration_s if train else data_args.eval_max_duration_s,
            train=train,
            augment=data_args.augment_config() if train else None,
            **(training_extras(clips) if train else {}),
        )

    if data_args.mask_absent_classes and training_args.label_smoothing_factor > 0:
        raise TrainSetupError("--label_smoothing_factor puts mass on every class, masked ones too: drop it or --mask_absent_classes.")
    if data_args.standardize_per_corpus and frozen_embedding_model(model) is None:
        raise TrainSetupError("--standardize_per_corpus needs a frozen Whisper encoder (--trainable_encoder_layers 0).")
    embed = None
    if data_args.cache_frozen_states:
        from ser.training.partial_finetune import fine_tune_on_cached_states

        if not hasattr(model, "embed_from_state"):
            raise TrainSetupError("--cache_frozen_states fine-tunes a WhisperSer's top blocks: use a Whisper checkpoint.")
        embed = fine_tune_on_cached_states(model, feature_extractor, data_args, model_args, training_args, split, waveform_of, label2id, training_extras)
    embedding_model = frozen_embedding_model(model)
    if getattr(model.config, "adapted_head", False) and (embedding_model is None or model_args.head_solver != "lbfgs"):
        raise TrainSetupError("adapted_head=true is fitted by --head_solver lbfgs on a frozen Whisper encoder: set both, or drop it.")
    adapted_test_datasets = {}
    adapted_train_dataset = None
    if embedding_model is not None:
        # A frozen encoder: embed every clip once (cached on disk), train only the head.
        datasets = embedding_datasets(embedding_model, feature_extractor, data_args, split, waveform_of, label2id, training_extras, embed)
        train_dataset, eval_dataset, test_dataset = datasets["train"], datasets["eval"], datasets["test"]
        adapted_test_datasets = {"speaker": datasets["test_speaker_adapted"], "corpus": datasets["test_corpus_adapted"]}
        adapted_train_dataset = datasets["train_speaker_standardised"]
        data_collator = collate_embeddings
    else:
        if model_args.head_solver != "trainer":
            raise TrainSetupError("--head_solver lbfgs needs a frozen Whisper encoder (--trainable_encoder_layers 0).")
        train_dataset, test_dataset = dataset(split.train, True), dataset(split.test, False)
        eval_dataset = dataset(split.eval, False) if split.eval else None
        data_collator = AudioCollator(feature_extractor)
        if hasattr(model, "embedding_mean"):
            set_training_statistics(model, feature_extractor, [waveform_of[clip.path] for clip in split.train])
    if eval_dataset is None and training_args.eval_strategy != "no":
        raise TrainSetupError("The eval split is empty but --eval_strategy is not 'no'.")

    split_summary = split.summary() | {"skipped_clips": [{"path": path, "reason": reason} for path, reason in loaded.failures]}
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(output_dir / "split.json", split_summary)
        _write_json(
            output_dir / "train_config.json",
            {
                "command": command,
                "labels": labels,
                "world_size": training_args.world_size,
                "data": asdict(data_args),
                "model": asdict(model_args),
                "training": training_args.to_dict(),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            },
        )

    train_label_ids = train_dataset.label_ids
    missing = [label for label in labels if label2id[label] not in set(train_label_ids)]
    if missing:
        logger.warning("No training clips for %s: the model cannot learn these classes.", missing)
    trainer = SerTrainer(
        model=model,
        args=training_args,
        data_collator=data_collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=feature_extractor,
        compute_metrics=make_compute_metrics(labels),
        class_weights=class_weights(train_label_ids, len(labels)) if data_args.class_balance == "weighted_loss" and model_args.head_solver == "trainer" else None,
        sample_weights=sample_weights(train_label_ids) if data_args.class_balance == "sampler" else None,
        mixup_alpha=data_args.mixup_alpha,
    )
    if model_args.head_solver == "lbfgs":
        from ser.training.linear_head import fit_linear_head

        if data_args.class_balance == "sampler":
            raise TrainSetupError("--head_solver lbfgs fits on every clip at once: use --class_balance weighted_loss, corpus_class or none.")
        fitted = [(train_dataset, False)] + ([(adapted_train_dataset, True)] if adapted_train_dataset is not None else [])
        if data_args.class_balance == "weighted_loss":
            weights = class_weights(train_label_ids, len(labels)).numpy()
            for fitted_dataset, _ in fitted:
                fitted_dataset.extras["loss_weight"] = torch.from_numpy(weights[np.asarray(train_label_ids)]).float()
        try:
            for fitted_dataset, adapted in fitted:
                fit_linear_head(model, fitted_dataset, model_args.l2_C, adapted=adapted)
        except ValueError as error:
            raise TrainSetupError(str(error)) from error
        model.eval()
        trainer.save_model()
    else:
        train_result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()

    prediction = trainer.predict(test_dataset, metric_key_prefix="test")
    trainer.log_metrics("test", prediction.metrics)
    if not trainer.is_world_process_zero():
        return None
    test_corpora = [clip.corpus for clip in split.test]

    def test_metrics(prediction, **extra) -> dict:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        y_pred = [labels[index] for index in np.argmax(logits, axis=-1)]
        y_true = [labels[index] for index in prediction.label_ids]
        result = classification_metrics(y_true, y_pred, labels) | {
            "split": "test",
            "speakers": split_summary["test"]["speakers"],
            "model": model_args.from_scratch and f"from_scratch:{model_args.from_scratch}" or model_args.model_name_or_path,
            **extra,
        }
        if len(set(test_corpora)) > 1:
            # Each test corpus alone as well (a held-out corpus beside held-out speakers of another).
            result["per_corpus"] = {
                corpus: {
                    name: value
                    for name, value in classification_metrics(
                        [true for true, of in zip(y_true, test_corpora) if of == corpus], [pred for pred, of in zip(y_pred, test_corpora) if of == corpus], labels
                    ).items()
                    if name in ("accuracy", "macro_f1", "uar", "n")
                }
                for corpus in sorted(set(test_corpora), key=str)
            }
        return result

    metrics = test_metrics(prediction)
    _write_json(output_dir / "metrics.json", metrics)
    for adapt, adapted_dataset in adapted_test_datasets.items():
        file_name = SPEAKER_ADAPTED_METRICS if adapt == "speaker" else CORPUS_ADAPTED_METRICS
        adapted = test_metrics(trainer.predict(adapted_dataset, metric_key_prefix=f"test_{adapt}_adapted"), adapt=adapt)
        _write_json(output_dir / file_name, adapted)
        logger.info("Test split, each %s's own statistics: accuracy %.3f -> %s", adapt, adapted["accuracy"], output_dir / file_name)
    trainer.model_card = format_model_card(
        metrics["model"], labels, metrics, split_summary, " ".join(data_args.data_dirs()), command
    )
    (output_dir / "README.md").write_text(trainer.model_card)
    logger.info("Test split: accuracy %.3f, macro-F1 %.3f, UAR %.3f (%d clips) -> %s", metrics["accuracy"], metrics["macro_f1"], metrics["uar"], metrics["n"], output_dir / "metrics.json")
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="train.py: model, metrics.json, split.json")
    return metrics


def _setup_logging(training_args) -> None:
    import transformers

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    level = logging.INFO if training_args.process_index == 0 else logging.WARNING
    for name in ("train", "ser"):
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    data_args, model_args, training_args = parse_arguments(argv)
    _setup_logging(training_args)
    command = "python train.py " + shlex.join(argv)
    try:
        run(data_args, model_args, training_args, command)
    except (CorpusError, SplitError, AudioError, TrainSetupError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
