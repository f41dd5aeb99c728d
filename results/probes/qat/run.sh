#!/usr/bin/env bash
# Fine-tuning with and without quantization-aware training (issue 18), on the validation split:
# mnist-mlp's fast recipe (150 epochs, elastic 10, seed 0, 5,000 training images held out:
# results/probes/recipe/mnist-mlp/e150-el10-s0, whose checkpoint must be on this machine)
# trained 3 epochs more at 2% of the recipe's peak rate, cosine to 0, no warm-up, with --qat and
# without; then float, int8 and their agreement on the held-out images (agreement.py).
#   bash results/probes/qat/run.sh > results/probes/qat/run.log 2>&1
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
start=results/probes/recipe/mnist-mlp/e150-el10-s0
for name in qat plain; do
    dir=results/probes/qat/mnist-mlp/$name
    [ -f "$dir/summary.json" ] && continue
    mkdir -p "$dir"
    extra=()
    [ "$name" = qat ] && extra=(--qat)
    ./run mtsnn train mnist-mlp --recipe fast --val-holdout 5000 --init-from "$start" --epochs 3 --lr 0.0002 \
        --warmup-epochs 0 --seed 0 --run-dir "$dir" "${extra[@]}" >> "$dir/console.log" 2>&1
    tail -1 "$dir/console.log"
done
./run python results/probes/qat/agreement.py "$start" results/probes/qat/mnist-mlp/{qat,plain}
