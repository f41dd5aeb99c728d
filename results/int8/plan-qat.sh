#!/usr/bin/env bash
# Integer-ready versions of the shipped models (issue 18): each shipped model PRESET fine-tuned
# with quantization-aware training (--qat: its weights rounded to int8 as integer-only inference
# rounds them, the gradient straight through) on all 60,000 training images with the fast
# recipe, without a teacher: 3 epochs, the rate falling from 2% of the recipe's peak to 0 along
# a cosine, no warm-up (chosen before any test run; results/probes/qat/), without batch norm
# (a model trained with it starts from its folded weights, as qat needs). Kept as
# models/PRESET-qat, with its float and int8 test accuracy in results/int8/PRESET-qat.json.
# Resumable. Run from the repository root, in the background:
#   nohup bash results/int8/plan-qat.sh PRESET... >> results/int8/plan-qat.log 2>&1 &
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
for preset in "$@"; do
    dir="results/int8/runs/$preset-qat/seed0"
    if [ ! -f "$dir/summary.json" ]; then
        mkdir -p "$dir"
        echo "$(date +%H:%M) $dir"
        if [ -f "$dir/checkpoint.safetensors" ]; then
            ./run mtsnn train --resume "$dir" >> "$dir/console.log" 2>&1
        else
            lr=$(./run python -c "from mtsnn.config import preset; print(preset('$preset', recipe='fast').lr / 50)")
            ./run mtsnn train "$preset" --recipe fast --init-from "pretrained:$preset" --qat --no-batch-norm --epochs 3 \
                --lr "$lr" --warmup-epochs 0 --seed 0 --run-dir "$dir" >> "$dir/console.log" 2>&1
        fi
        tail -1 "$dir/console.log"
    fi
    [ -f "$dir/summary.json" ] && [ ! -f "models/$preset-qat.json" ] \
        && ./run mtsnn eval "$dir" --keep-weights "models/$preset-qat" >> "$dir/console.log" 2>&1
    [ -f "models/$preset-qat.json" ] && [ ! -f "results/int8/$preset-qat.json" ] \
        && ./run mtsnn eval "pretrained:$preset-qat" --int8 --json > "results/int8/$preset-qat.json"
done
