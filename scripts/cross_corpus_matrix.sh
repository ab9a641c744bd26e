#!/usr/bin/env bash
# The cross-corpus matrix of model_card.md: the chosen recipe (configs/multicorpus_model.json) trained on
# each corpus mix (RAVDESS actors 1-20 alone, + EMO-DB, + nEMO, all three), each scored on the two test
# sets, RAVDESS actors 21-24 and EMOVO, single clip (metrics.json) and with each test corpus's own
# statistics (metrics_corpus_adapted.json); one train.py run per mix, its per_corpus scores are the row.
# The test sets are only scored here, after the recipe was chosen. The RAVDESS-only Whisper model
# (models/ser-ravdess) is a row too: its corpus-adapted RAVDESS score is evaluated here. Writes
# models/ser-multicorpus/matrix/<mix>/. Needs ../shared/data and runs/whisper-base.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
CACHE=${CACHE:-runs/embedding_cache}
MATRIX=models/ser-multicorpus/matrix
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

for mix in ravdess ravdess+emodb ravdess+nemo ravdess+emodb+nemo; do
    dirs=()
    for corpus in ${mix//+/ }; do dirs+=("$DATA/$corpus"); done
    python train.py configs/multicorpus_model.json --data_dir "${dirs[@]}" "$DATA/emovo" --test_corpora emovo \
        --test_speakers ravdess:21,ravdess:22,ravdess:23,ravdess:24 --embedding_cache_dir "$CACHE" --output_dir "runs/matrix/$mix"
    mkdir -p "$MATRIX/$mix"
    cp runs/matrix/"$mix"/{metrics.json,metrics_corpus_adapted.json} "$MATRIX/$mix/"
done
python evaluate_crosslingual.py --model models/ser-ravdess --backend torch --data_dir "$DATA/ravdess" --speakers 21,22,23,24 \
    --adapt corpus --output_dir models/ser-ravdess/eval/ravdess-actors-21-24-corpus-adapted
