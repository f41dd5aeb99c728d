#!/usr/bin/env bash
# Second round of probes (fmnist-mlp, 15 epochs, seed 0), after screen.sh showed that
# random crop with padding 4 slows an MLP (its ANN twin too) far more than any other choice.
# Run from the repository root: bash results/probes/probe15.sh
# Kaiming init was the default then; it is given explicitly so the runs repeat with today's presets.
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
out=results/probes/probe15
run() { name=$1; shift; [ -f "$out/$name/summary.json" ] && return; rm -rf "$out/$name"
        ./run mtsnn train fmnist-mlp --epochs 15 --run-dir "$out/$name" "$@" > "$out/$name.log" 2>&1; }
mkdir -p $out
run paper-kaiming-crop0 --grad-mode paper --init kaiming --crop-padding 0
run detach-kaiming-crop0 --grad-mode bptt-detach --init kaiming --crop-padding 0
run paper-eq17-crop0 --grad-mode paper --init paper --crop-padding 0
run paper-kaiming-crop2 --grad-mode paper --init kaiming --crop-padding 2
run paper-kaiming-crop4 --grad-mode paper --init kaiming --crop-padding 4
run paper-kaiming-crop0-target10 --grad-mode paper --init kaiming --crop-padding 0 --target-true 10
run paper-kaiming-crop0-ce --grad-mode paper --init kaiming --crop-padding 0 --loss ce
run ann-crop0 --ann --init kaiming --crop-padding 0
run ann-crop2 --ann --init kaiming --crop-padding 2
# Seeds 1 and 2 for the grad-mode and init decision (issue 2), same budget.
for seed in 1 2; do
  run paper-kaiming-crop0-seed$seed --grad-mode paper --init kaiming --crop-padding 0 --seed $seed
  run detach-kaiming-crop0-seed$seed --grad-mode bptt-detach --init kaiming --crop-padding 0 --seed $seed
  run paper-eq17-crop0-seed$seed --grad-mode paper --init paper --crop-padding 0 --seed $seed
done
# Full BPTT with alpha_h = 0.1, where the reset factor 1 - v_th f stays in [0, 1] (Table 1's alpha_h = 1 gives about -9).
run bptt-alphah0.1-crop0 --grad-mode bptt --alpha-h 0.1 --init kaiming --crop-padding 0
