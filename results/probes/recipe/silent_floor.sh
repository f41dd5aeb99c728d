#!/usr/bin/env bash
# Silent output neurons in the first epoch with f2 on every layer and the output floor
# (--output-floor 1), in the paper's recipe otherwise (Adam at the preset's constant rate
# from the first step, no warm-up), 10 seeds per preset. Run from the repository root:
#   nohup bash results/probes/recipe/silent_floor.sh > results/probes/recipe/silent_floor.log 2>&1 &
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
for preset in fmnist-cnn mnist-cnn mnist-mlp fmnist-mlp; do
    .venv/bin/python results/probes/silent_outputs.py $preset 0,1,2,3,4,5,6,7,8,9 "{'output_floor': 1.0}"
done
