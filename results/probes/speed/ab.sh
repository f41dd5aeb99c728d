#!/bin/bash
# Epoch cost of mnist-cnn's fast recipe, 3 epochs each, one run after another on an idle machine:
# the code that trained results/runs/mnist-cnn-fast/ (fc93956, 2 December) and today's, both
# without batch norm, then today's with it. Run from the repository root.
set -euo pipefail
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets} OMP_NUM_THREADS=2
out=results/probes/speed
[ -d /tmp/mtsnn-fc93956 ] || git worktree add -f /tmp/mtsnn-fc93956 fc93956
uptime
PYTHONPATH=/tmp/mtsnn-fc93956/src ./run python -c "from mtsnn.experiments.cli import main; main()" \
    train mnist-cnn --recipe fast --epochs 3 --run-dir $out/old-plain
./run mtsnn train mnist-cnn --recipe fast --no-batch-norm --epochs 3 --run-dir $out/new-plain
./run mtsnn train mnist-cnn --recipe fast --epochs 3 --run-dir $out/new-bn
uptime
