#!/usr/bin/env bash
# Silent output neurons in the first epoch with f2 on every layer and a one-epoch linear
# warm-up of the learning rate (the paper's recipe otherwise: Adam at the preset's constant
# rate), 10 seeds per preset. Run from the repository root:
#   nohup bash results/probes/recipe/silent_warmup.sh > results/probes/recipe/silent_warmup.log 2>&1 &
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
for preset in mnist-mlp fmnist-mlp mnist-cnn fmnist-cnn; do
    .venv/bin/python results/probes/silent_outputs.py $preset 0,1,2,3,4,5,6,7,8,9 "{'warmup_epochs': 1.0}"
done
