#!/usr/bin/env bash
# Screening probes for the defaults the paper leaves open (fmnist-mlp, 5 epochs, seed 0).
# Run from the repository root: bash results/probes/screen.sh
# Crop padding 4 and Kaiming init were the defaults then; they are given explicitly so the
# runs repeat with today's presets.
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
out=results/probes/screen
run() { name=$1; shift; [ -f "$out/$name/summary.json" ] && return; rm -rf "$out/$name"
        ./run mtsnn train fmnist-mlp --epochs 5 --crop-padding 4 --run-dir "$out/$name" "$@" > "$out/$name.log" 2>&1; }
mkdir -p $out
for gm in paper bptt-detach bptt; do
  for init in kaiming paper; do run "gm-$gm-init-$init" --grad-mode $gm --init $init; done
done
for y in 1 2 3 10; do run "target-$y" --target-true $y --init kaiming; done
run "loss-ce" --loss ce --init kaiming
run "ann" --ann --init kaiming
