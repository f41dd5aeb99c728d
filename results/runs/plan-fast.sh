#!/usr/bin/env bash
# The fast recipe's runs (issue 16): `--recipe fast`, trained on all 60,000 training images
# and tested once, 3 seeds per preset, and the ANN twin with its own tuned settings
# (FAST_ANN), each resumable: a run with a summary.json is done, one with a checkpoint
# continues from it, others start. Seed 0 of the SNN is kept as the shipped model
# (models/PRESET) as soon as it finishes, on the machine that holds its checkpoint
# (checkpoints are not committed). Run from the repository root, in the background:
#   nohup bash results/runs/plan-fast.sh PRESET... > results/runs/plan-fast.log 2>&1 &
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
# A preset whose fast recipe batch-normalises (mnist-cnn's SNN and ANN twin since round 49 of
# issue 16) trains into PRESET-fast-bn (and PRESET-fast-ann-bn), beside the runs of the recipe
# before it, and ships no model by itself: which one models/PRESET holds is a decision of its own.
bn() {  # bn PRESET [ann]: "bn" if that network's fast recipe (the SNN's, or the twin's) has batch norm
    ./run python -c 'import sys; from mtsnn.config import preset; print("bn" * preset(sys.argv[1], recipe="fast", ann=sys.argv[2] == "ann").batch_norm)' "$1" "${2:-}"
}
run() {  # run PRESET SEED [ann]
    local preset=$1 seed=$2 ann=${3:-} variant
    variant="${ann:+$ann-}$(bn "$preset" "$ann")"
    variant=${variant%-}  # "", "bn", "ann" or "ann-bn"
    local dir="results/runs/$preset-fast${variant:+-$variant}/seed$seed" options=()
    [ -f "$dir/summary.json" ] && return
    mkdir -p "$dir"
    [ -n "$ann" ] && options=(--ann)
    echo "$(date +%H:%M) $dir"
    if [ -f "$dir/checkpoint.safetensors" ]; then
        ./run mtsnn train --resume "$dir" >> "$dir/console.log" 2>&1
    else
        ./run mtsnn train "$preset" --recipe fast --seed "$seed" --run-dir "$dir" "${options[@]}" >> "$dir/console.log" 2>&1
    fi
    tail -1 "$dir/console.log"
    if [ "$seed" = 0 ] && [ -z "$variant" ] && [ -f "$dir/summary.json" ]; then
        ./run mtsnn eval "$dir" --keep-weights "models/$preset" >> "$dir/console.log" 2>&1 \
            || echo "  keeping the weights failed: see $dir/console.log"
    fi
}
for preset in "$@"; do
    for seed in 0 1 2; do run "$preset" $seed; done
    for seed in 0 1 2; do run "$preset" $seed ann; done
done
