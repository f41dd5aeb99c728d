#!/usr/bin/env bash
# The ANN twin of mnist-cnn without and with batch norm, 60 epochs of its fast recipe, seed 0,
# scored on the 5,000 held-out training images. From the repository root:
#   nohup bash results/probes/recipe/bn/ann_prior.sh > results/probes/recipe/bn/ann_prior.log 2>&1 &
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
for name in ann-e60 ann-e60-bn; do
    dir="results/probes/recipe/bn/$name"
    [ -f "$dir/summary.json" ] && continue
    mkdir -p "$dir"
    flag=""; [ "$name" = ann-e60-bn ] && flag=--bn
    echo "$(date +%H:%M) $name"
    ./run python results/probes/recipe/bn/ann_prior.py "$dir" $flag --seed 0 >> "$dir/console.log" 2>&1
    tail -1 "$dir/console.log"
done
