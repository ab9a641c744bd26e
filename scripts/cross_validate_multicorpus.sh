#!/usr/bin/env bash
# How the multi-corpus recipe (models/ser-multicorpus) was chosen: leave-one-corpus-out folds over the
# training corpora RAVDESS (actors 1-20), EMO-DB and nEMO. Each fold trains on two corpora and scores the
# third, single-clip (metrics.json: the selection score is the mean over the three held-out corpora) and
# with the held-out corpus's own statistics (metrics_corpus_adapted.json, no labels). RAVDESS actors 21-24
# and EMOVO (the test sets) are in no fold. Writes models/ser-multicorpus/cv/loco/<candidate>.json and
# cv/loco_corpus_adapted/<candidate>.json; the corpus-mix runs (train on one corpus, score the two others)
# write cv/mix/<corpus>/. Each held-out corpus is also scored with each of its speakers' own statistics
# (metrics_speaker_adapted.json -> cv/loco_speaker_adapted/<candidate>.json): what calibration to a voice gives. model_card.md quotes them. The frozen encoder's embeddings are cached
# (--embedding_cache_dir), so each fold trains only a head. Needs ../shared/data and runs/whisper-base
# (python -m scripts.import_whisper --output_dir runs/whisper-base).
# Usage: scripts/cross_validate_multicorpus.sh [CANDIDATE ...]   (no names: every candidate, speaker folds and mix;
# names: linear_layers234, speakers_linear_layers234, mix_emodb, ...)
set -euo pipefail
SELECTED=" $* "
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
CACHE=${CACHE:-runs/embedding_cache}
MODEL=models/ser-multicorpus
CONFIG=configs/multicorpus_model.json
EXCLUDED=ravdess:21,ravdess:22,ravdess:23,ravdess:24
DIRS=("$DATA/ravdess" "$DATA/emodb" "$DATA/nemo")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

selected() { [[ "$SELECTED" == "  " || "$SELECTED" == *" $1 "* ]]; }

candidate() {  # NAME [train.py flags overriding configs/multicorpus_model.json]
    local name=$1
    shift
    selected "$name" || return 0
    python -m scripts.cross_validate "$CONFIG" --output_dir "runs/cv-loco/$name" --folds loco:ravdess,emodb,nemo \
        --exclude_speakers "$EXCLUDED" -- --data_dir "${DIRS[@]}" --embedding_cache_dir "$CACHE" "$@"
    for adapted in corpus speaker; do
        python -m scripts.cross_validate "$CONFIG" --output_dir "runs/cv-loco/$name" --folds loco:ravdess,emodb,nemo \
            --exclude_speakers "$EXCLUDED" --pool_only --metrics_file "metrics_${adapted}_adapted.json"
        mkdir -p "$MODEL/cv/loco_${adapted}_adapted"
        cp "runs/cv-loco/$name/cv_metrics_${adapted}_adapted.json" "$MODEL/cv/loco_${adapted}_adapted/$name.json"
    done
    mkdir -p "$MODEL/cv/loco"
    cp "runs/cv-loco/$name/cv.json" "$MODEL/cv/loco/$name.json"
}

LINEAR="head_hidden_size=0,dropout=0.0,ensemble_size=1,layer_pooling=concat"
L1234=(--config_overrides "layers=[1,2,3,4],$LINEAR")
# Logistic regression (C=0.002) on hidden states 1-4 side by side, each corpus and each class within it
# weighted alike, classes a corpus lacks masked out of its loss: phase 1's best recipe, the reference.
candidate linear_layers1234 "${L1234[@]}"
# Corpus-wise standardisation in training (each training corpus with its own statistics).
candidate linear_layers1234_per_corpus "${L1234[@]}" --standardize_per_corpus true
# The layer choice. configs/multicorpus_model.json holds the winner, hidden states 2-4.
candidate linear_layers123 --config_overrides "layers=[1,2,3],$LINEAR"
candidate linear_layers234 --config_overrides "layers=[2,3,4],$LINEAR"
candidate linear_layers01234 --config_overrides "layers=[0,1,2,3,4],$LINEAR"
# The regularisation strength (smaller C = stronger).
candidate linear_layers1234_C0.0005 "${L1234[@]}" --l2_C 0.0005
candidate linear_layers1234_C0.02 "${L1234[@]}" --l2_C 0.02
# Balancing and masking: class weights only (the largest corpus dominates), no masking of absent classes.
candidate linear_layers1234_class_weights "${L1234[@]}" --class_balance weighted_loss
candidate linear_layers1234_no_mask "${L1234[@]}" --mask_absent_classes false
# The RAVDESS-only bundled head (an ensemble of five MLPs on the weighted layers), trained on the same mix.
MLP=(--head_solver trainer --config_overrides "layers=[1,2,3,4],head_hidden_size=256,dropout=0.2,ensemble_size=5"
     --num_train_epochs 12 --per_device_train_batch_size 64 --learning_rate 0.002 --weight_decay 0.01
     --lr_scheduler_type cosine --warmup_steps 0.05 --logging_steps 50)
candidate mlp_ensemble_layers1234 "${MLP[@]}"
candidate mlp_ensemble_layers1234_per_corpus "${MLP[@]}" --standardize_per_corpus true

# Phase 2 (issue 28). The reference row is linear_layers234 (the bundled recipe until then). A second, adapted
# head fitted on training clips standardised with their own speaker's statistics answers whenever other
# statistics than the training set's are used (calibration, --adapt speaker|corpus, the timeline).
L234A=(--config_overrides "layers=[2,3,4],$LINEAR,adapted_head=true")
candidate adapted_head_layers234 "${L234A[@]}"
candidate adapted_head_layers234_C0.0005 "${L234A[@]}" --l2_C 0.0005
candidate adapted_head_layers234_C0.01 "${L234A[@]}" --l2_C 0.01
candidate adapted_head_layers234_no_mask "${L234A[@]}" --mask_absent_classes false
# Augmentation (audiomentations; ser/audio/augment.py): fixed copies of every training clip, embedded once
# and cached beside the original.
candidate adapted_head_layers234_pitch "${L234A[@]}" --embedding_copies pitch=-2,pitch=2
candidate adapted_head_layers234_tempo "${L234A[@]}" --embedding_copies tempo=0.9,tempo=1.1
candidate adapted_head_layers234_noise "${L234A[@]}" --embedding_copies color_noise_snr_db=15
candidate adapted_head_layers234_opus "${L234A[@]}" --embedding_copies opus_kbps=16
candidate adapted_head_layers234_pitch_noise "${L234A[@]}" --embedding_copies pitch=-2,pitch=2,color_noise_snr_db=15
# A generalisation lever that a frozen encoder can afford: mixup across corpora within a class (each
# training clip's embedding mixed with a same-class clip of another corpus, its own side weighing 0.5-1).
candidate adapted_head_layers234_noise_mixup "${L234A[@]}" --embedding_copies color_noise_snr_db=15 --corpus_mixup_copies 1
candidate adapted_head_layers234_noise_mixup2 "${L234A[@]}" --embedding_copies color_noise_snr_db=15 --corpus_mixup_copies 2
candidate adapted_head_layers234_noise_mixup4 "${L234A[@]}" --embedding_copies color_noise_snr_db=15 --corpus_mixup_copies 4
# Partial fine-tuning (ser/training/partial_finetune.py): hidden state 2 cached once per clip (float16, in
# memory), blocks 3-4 and the head trained by the Trainer (AdamW: blocks 1e-5, head 1e-4; one epoch, about 10
# minutes a fold on 2 cores), then the encoder frozen again and both linear heads refitted. The generalisation
# lever beside it: a corpus adversary behind a gradient reversal (the blocks learn to hide the corpus).
FT=(--trainable_encoder_layers 2 --cache_frozen_states true --num_train_epochs 1 --per_device_train_batch_size 16
    --learning_rate 1e-5 --head_learning_rate 1e-4 --weight_decay 0.01 --lr_scheduler_type linear --warmup_steps 0.05
    --logging_steps 50 --eval_strategy no --load_best_model_at_end false)
# Without fixed copies (an epoch over them doubles the time): compare with adapted_head_layers234.
candidate finetune_blocks34 "${L234A[@]}" "${FT[@]}" --embedding_copies ""
candidate finetune_blocks34_adversarial "${L234A[@]}" "${FT[@]}" --embedding_copies "" --corpus_adversarial_weight 0.1

# Speaker folds beside the corpus folds: RAVDESS actors 1-20 in five folds of four, trained with all three
# corpora (EMO-DB and nEMO always train), scored single clip and with each held-out speaker's own statistics
# (metrics_speaker_adapted.json). Writes cv/speakers/<name>.json and cv/speakers_adapted/<name>.json.
speaker_folds() {  # NAME [train.py flags]
    local name=$1
    shift
    selected "speakers_$name" || return 0
    local folds="ravdess:1-4;ravdess:5-8;ravdess:9-12;ravdess:13-16;ravdess:17-20"
    python -m scripts.cross_validate "$CONFIG" --output_dir "runs/cv-speakers/$name" --folds "$folds" \
        --exclude_speakers "$EXCLUDED" -- --data_dir "${DIRS[@]}" --embedding_cache_dir "$CACHE" "$@"
    python -m scripts.cross_validate "$CONFIG" --output_dir "runs/cv-speakers/$name" --folds "$folds" \
        --exclude_speakers "$EXCLUDED" --pool_only --metrics_file metrics_speaker_adapted.json
    mkdir -p "$MODEL/cv/speakers" "$MODEL/cv/speakers_adapted"
    cp "runs/cv-speakers/$name/cv.json" "$MODEL/cv/speakers/$name.json"
    cp "runs/cv-speakers/$name/cv_metrics_speaker_adapted.json" "$MODEL/cv/speakers_adapted/$name.json"
}
speaker_folds linear_layers234
speaker_folds linear_layers1234 "${L1234[@]}"

# The corpus mix: the chosen recipe (configs/multicorpus_model.json) trained on one corpus alone, scored on the two others (compare
# with the leave-one-corpus-out folds above, which train on the two others together).
for corpus in ravdess emodb nemo; do
    selected "mix_$corpus" || continue
    others=$(printf '%s\n' ravdess emodb nemo | grep -vx "$corpus" | paste -sd,)
    python train.py "$CONFIG" --data_dir "${DIRS[@]}" --test_corpora "$others" --test_speakers "" \
        --exclude_speakers "$EXCLUDED" --embedding_cache_dir "$CACHE" --output_dir "runs/cv-mix/$corpus"
    mkdir -p "$MODEL/cv/mix/$corpus"
    cp runs/cv-mix/"$corpus"/{metrics.json,metrics_corpus_adapted.json} "$MODEL/cv/mix/$corpus/"
done
