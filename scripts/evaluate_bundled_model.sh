#!/usr/bin/env bash
# The evaluations model_card.md quotes, for one model folder: RAVDESS actors 21-24 and EMOVO,
# single-clip (with added noise at four SNRs). Usage: scripts/evaluate_bundled_model.sh MODEL_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
MODEL=$1
EVAL="python evaluate_crosslingual.py --model $MODEL --backend torch"
$EVAL --data_dir "$DATA/ravdess" --speakers 21,22,23,24 --snr_db 20,10,5,0 --output_dir "$MODEL/eval/ravdess-actors-21-24"
$EVAL --data_dir "$DATA/emovo" --snr_db 20,10,5,0 --output_dir "$MODEL/eval/emovo"
# Adapted: each test speaker's own statistics, and (EMOVO) the corpus's own. No labels, but they see the test clips.
$EVAL --data_dir "$DATA/ravdess" --speakers 21,22,23,24 --adapt speaker --output_dir "$MODEL/eval/ravdess-actors-21-24-speaker-adapted"
$EVAL --data_dir "$DATA/emovo" --adapt corpus --output_dir "$MODEL/eval/emovo-corpus-adapted"
$EVAL --data_dir "$DATA/emovo" --adapt speaker --output_dir "$MODEL/eval/emovo-speaker-adapted"
