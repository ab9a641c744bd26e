"""Estimate the GPU time of the wav2vec2-base recipe from counted FLOPs (no GPU, no download).

FLOPs of one forward pass are counted with torch's FlopCounterMode on a randomly initialised
wav2vec2-base (same shapes as facebook/wav2vec2-base); training is taken as 3x forward (forward +
backward), minus nothing for the frozen CNN encoder (an over-estimate of a few percent). The GPU
throughput is an assumption you pass in, not a measurement: the output says so.

    python -m scripts.estimate_wav2vec2_gpu_time --output models/ser-ravdess/eval/wav2vec2_base_estimate.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

from ser.audio.loader import TARGET_SAMPLE_RATE
from ser.core.labels import DEFAULT_LABELS

logger = logging.getLogger("estimate_wav2vec2_gpu_time")

# Kaggle "Audio Emotions" class counts as published with the dataset (not measured here: the corpus
# cannot be downloaded in this environment). Surprised (592 clips) is left out.
AUDIO_EMOTIONS_CLIPS_WITHOUT_SURPRISED = 2167 + 1863 + 2047 + 2167 + 1795 + 2167


def forward_gflop(clip_s: float) -> float:
    config = Wav2Vec2Config(num_labels=len(DEFAULT_LABELS))
    model = Wav2Vec2ForSequenceClassification(config).eval()
    # The weight-norm parametrisation of the positional conv trips FlopCounterMode; folding it into
    # a plain weight changes no FLOP count.
    torch.nn.utils.parametrize.remove_parametrizations(model.wav2vec2.encoder.pos_conv_embed.conv, "weight")
    waveform = torch.zeros(1, int(clip_s * TARGET_SAMPLE_RATE))
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(waveform)
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip_s", type=float, default=4.0, help="Training crop length (train.py --max_duration_s).")
    parser.add_argument("--clips", type=int, default=AUDIO_EMOTIONS_CLIPS_WITHOUT_SURPRISED, help="Clips per epoch (before the split).")
    parser.add_argument("--train_fraction", type=float, default=0.65, help="Share of clips in the train split (train.py defaults: 1 - 0.2 - 0.15).")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--assumed_tflops", type=float, default=30.0, help="ASSUMED sustained training TFLOP/s (default 30: roughly 10%% of an A100/H100 bf16 peak, typical of small-batch audio fine-tuning).")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    gflop = forward_gflop(args.clip_s)
    train_clips = int(args.clips * args.train_fraction) * args.epochs
    total_tflop = 3 * gflop * train_clips / 1e3
    result = {
        "forward_gflop_per_clip": round(gflop, 2),
        "clip_s": args.clip_s,
        "train_clips_total": train_clips,
        "epochs": args.epochs,
        "total_training_pflop": round(total_tflop / 1e3, 2),
        "assumed_tflops": args.assumed_tflops,
        "estimated_gpu_minutes": round(total_tflop / args.assumed_tflops / 60, 1),
        "measured": False,
        "method": "FLOPs counted with torch FlopCounterMode on random wav2vec2-base, x3 for training, divided by an assumed throughput",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("%s", result)


if __name__ == "__main__":
    main()
