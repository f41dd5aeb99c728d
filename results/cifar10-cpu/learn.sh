#!/usr/bin/env bash
# Issue 21, part 3: a short cifar10-cnn SNN run on this CPU that must learn: 3 epochs on the
# first 10,000 training images, scored on all 10,000 test images, with the fast recipe and the
# calibrated start and learning rate that scored best on the validation screens
# (results/probes/cifar10-calibrate/, run.sh there). Data: the CIFAR-10 JPEG proxy.
#   bash results/cifar10-cpu/learn.sh
set -eu
best=$(./run python - <<'PYEOF'
from pathlib import Path
from mtsnn.experiments.rundir import read_run
runs = [r for r in map(read_run, sorted(Path("results/probes/cifar10-calibrate").glob("calibrate-*/"))) if r and r.complete]
best = max(runs, key=lambda r: r.rows[-1].score)
print(best.config["calibrate"], best.config["lr"])
PYEOF
)
read -r std lr <<< "$best"
echo "chosen on validation: --calibrate $std --lr $lr"
dir=results/cifar10-cpu/learn
rm -rf "$dir"
./run mtsnn train cifar10-cnn --recipe fast --calibrate "$std" --lr "$lr" --epochs 3 --train-limit 10000 \
    --data-root "${CIFAR_ROOT:-/work/data/cifar-proxy}" --run-dir "$dir" > "$dir.log" 2>&1
tail -1 "$dir.log"
