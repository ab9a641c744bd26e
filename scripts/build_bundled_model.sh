#!/usr/bin/env bash
# Rebuild the bundled model from scratch: train, copy, evaluate, write the model card.
# About an hour on 2 CPU cores. Needs ../shared/data (RAVDESS + EMOVO), which is never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
RUN=${RUN:-runs/bundled}
MODEL=models/ser-ravdess

python train.py configs/bundled_model.json --data_dir "$DATA/ravdess" --output_dir "$RUN"

# Ship only what serving and the card need (no checkpoints, no optimizer state).
# cv/ (scripts/cross_validate_recipes.sh: how the recipe was chosen) is kept.
mkdir -p "$MODEL" && find "$MODEL" -mindepth 1 -maxdepth 1 ! -name cv -exec rm -rf {} +
cp "$RUN"/{config.json,model.safetensors,preprocessor_config.json,metrics.json,split.json,train_config.json} "$MODEL"/

EVAL="python evaluate_crosslingual.py --model $MODEL --backend torch --snr_db 20,10,5,0"
$EVAL --data_dir "$DATA/ravdess" --speakers 21,22,23,24 --output_dir "$MODEL/eval/ravdess-actors-21-24"
$EVAL --data_dir "$DATA/emovo" --output_dir "$MODEL/eval/emovo"
python -m scripts.estimate_wav2vec2_gpu_time --output "$MODEL/eval/wav2vec2_base_estimate.json"
python -m scripts.make_model_card
