#!/usr/bin/env bash
# Silent output neurons in the first epoch of mnist-cnn's fast recipe since round 49 (batch
# norm, with the output floor and the one-epoch warm-up it had before), 10 seeds, as
# ../silent_floor.sh measured the floor alone. With batch norm the check's forward pass (train
# mode) normalises by the 1,000 images' own statistics, as training's passes do. Run from the
# repository root:
#   nohup bash results/probes/recipe/bn/silent_bn.sh > results/probes/recipe/bn/silent_bn.log 2>&1 &
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
.venv/bin/python results/probes/silent_outputs.py mnist-cnn 0,1,2,3,4,5,6,7,8,9 "{'recipe': 'fast'}"
