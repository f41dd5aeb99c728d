#!/usr/bin/env bash
# Third round (fmnist-mlp, 40 epochs, seed 0): how much random-crop padding suits the
# MLP over a longer budget. probe15 showed padding 4 far behind after 15 epochs, while
# without cropping the MLP overfits (train 95%, test 89.4%).
# Run from the repository root: bash results/probes/probe_crop.sh
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
out=results/probes/crop40
run() { name=$1; shift; [ -f "$out/$name/summary.json" ] && return; rm -rf "$out/$name"
        ./run mtsnn train fmnist-mlp --epochs 40 --run-dir "$out/$name" "$@" > "$out/$name.log" 2>&1; }
mkdir -p $out
for pad in 0 1 2 4; do run "crop$pad" --crop-padding $pad; done
