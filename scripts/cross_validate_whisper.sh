#!/usr/bin/env bash
# How the bundled recipe (WhisperSer: frozen whisper-base encoder + head) was chosen: 5-fold actor
# cross-validation on RAVDESS actors 1-20 (actors 21-24, the test set, are excluded from every fold),
# for each candidate. Each fold scores its held-out actors single-clip (metrics.json) and with each
# held-out speaker's own statistics (metrics_speaker_adapted.json, no labels). Writes
# models/ser-ravdess/cv/<candidate>.json and cv/speaker_adapted/<candidate>.json, which model_card.md quotes.
# The encoder's hidden states are cached (train.py --embedding_cache_dir), so after the first fold
# each fold trains only a head. Needs ../shared/data and runs/whisper-base (python -m scripts.import_whisper).
# Usage: scripts/cross_validate_whisper.sh [CANDIDATE ...]   (no names: all candidates)
set -euo pipefail
SELECTED=" $* "
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
MODEL=models/ser-ravdess

candidate() {  # NAME CONFIG_OVERRIDES [more train.py flags]
    local name=$1 overrides=$2
    shift 2
    if [[ "$SELECTED" != "  " && "$SELECTED" != *" $name "* ]]; then return 0; fi
    python -m scripts.cross_validate configs/bundled_model.json --output_dir "runs/cv/$name" --jobs 2 \
        -- --data_dir "$DATA/ravdess" --config_overrides "$overrides" --disable_tqdm true "$@"
    python -m scripts.cross_validate configs/bundled_model.json --output_dir "runs/cv/$name" --pool_only \
        --metrics_file metrics_speaker_adapted.json
    mkdir -p "$MODEL/cv/speaker_adapted"
    cp "runs/cv/$name/cv.json" "$MODEL/cv/$name.json"
    cp "runs/cv/$name/cv_metrics_speaker_adapted.json" "$MODEL/cv/speaker_adapted/$name.json"
}

HEAD="head_hidden_size=256,dropout=0.2,ensemble_size=1"
# The first candidates ran with two fixed speed copies of every training clip (configs/bundled_model.json now has four).
TWO_COPIES="--embedding_copies speed=0.88,speed=1.12"
# Which hidden states: the issue's probe found the middle blocks best (layer 2 for EMOVO, 4 for RAVDESS).
candidate layers234 "layers=[2,3,4],$HEAD" $TWO_COPIES
candidate layers_all "layers=[0,1,2,3,4,5,6],$HEAD" $TWO_COPIES
candidate layers3456 "layers=[3,4,5,6],$HEAD" $TWO_COPIES
candidate layers1234 "layers=[1,2,3,4],$HEAD" $TWO_COPIES
# The head: logistic regression on the weighted layers instead of a 256-unit MLP.
candidate layers234_linear "layers=[2,3,4],head_hidden_size=0,dropout=0.2,ensemble_size=1" $TWO_COPIES
# Augmentation: no fixed copies (the clip alone) instead of speed 0.88 and 1.12.
candidate layers234_nocopies "layers=[2,3,4],$HEAD" --embedding_copies ""
# More speed copies: 0.94 and 1.06 besides 0.88 and 1.12.
candidate layers234_speed4 "layers=[2,3,4],$HEAD" --embedding_copies speed=0.88,speed=0.94,speed=1.06,speed=1.12
# The two best single-clip changes together: hidden state 1 as well, and four speed copies.
candidate layers1234_speed4 "layers=[1,2,3,4],$HEAD" --embedding_copies speed=0.88,speed=0.94,speed=1.06,speed=1.12
# Standardise each training speaker with their own statistics (matches adapted prediction; single clips then mismatch).
candidate layers234_perspeaker "layers=[2,3,4],$HEAD" --standardize_per_speaker true $TWO_COPIES
candidate layers_all_perspeaker "layers=[0,1,2,3,4,5,6],$HEAD" --standardize_per_speaker true $TWO_COPIES
