#!/usr/bin/env bash
# The long runs of Tables 2-5 (issue 5), one at a time, each resumable: a run with a
# summary.json is done, one with a checkpoint continues from it, others start.
# Run from the repository root, in the background:
#   nohup bash results/runs/plan.sh > results/runs/plan.log 2>&1 &
# The presets' settings throughout (Table 1, plus the defaults chosen in results/probes/README.md).
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
run() {  # run PRESET SEED [ann]
    local preset=$1 seed=$2 variant=${3:-}
    local dir="results/runs/$preset${variant:+-$variant}/seed$seed"
    [ -f "$dir/summary.json" ] && return
    mkdir -p "$dir"
    if [ -f "$dir/checkpoint.safetensors" ]; then
        ./run mtsnn train --resume "$dir" >> "$dir/console.log" 2>&1
    else
        ./run mtsnn train "$preset" --seed "$seed" --run-dir "$dir" ${variant:+--ann} >> "$dir/console.log" 2>&1
    fi
}
for seed in 0 1 2; do run fmnist-mlp $seed; done
run fmnist-mlp 0 ann
for seed in 0 1 2; do run mnist-mlp $seed; done
run mnist-mlp 0 ann
run mnist-cnn 0 ann
# Seed 0 of mnist-mlp lost class 9 in its first steps (a silent output neuron, never
# recovered); the paper averages 5 runs, so mnist-mlp gets 5 seeds.
for seed in 3 4; do run mnist-mlp $seed; done
run mnist-cnn 0
run fmnist-cnn 0 ann
run fmnist-cnn 0
