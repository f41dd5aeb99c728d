#!/usr/bin/env bash
# Issue 21: which calibrated start (--calibrate STD, mtsnn.models.calibrate), and which peak
# learning rate, trains cifar10-cnn best in a short run, chosen on a validation split: 5,000
# training images held out, the first 2,000 of them scored; each run trains 2 epochs (80 steps
# of 128) on 5,000 further training images, with the fast recipe (one epoch of warm-up, then
# cosine). Data: the CIFAR-10 JPEG proxy, not the original CIFAR-10.
#   bash results/probes/cifar10-calibrate/run.sh STD[:LR]...     e.g. 1 2 1:0.002
set -u
here=results/probes/cifar10-calibrate
for entry in "$@"; do
    std=${entry%%:*} lr=${entry#*:}
    [ "$lr" = "$entry" ] && lr=""
    dir=$here/calibrate-$std${lr:+-lr$lr}
    [ -f "$dir/summary.json" ] && continue
    rm -rf "$dir"
    ./run mtsnn train cifar10-cnn --recipe fast --calibrate "$std" ${lr:+--lr "$lr"} --epochs 2 \
        --train-limit 5000 --val-holdout 5000 --test-limit 2000 \
        --data-root "${CIFAR_ROOT:-/work/data/cifar-proxy}" --run-dir "$dir" > "$dir.log" 2>&1
    tail -1 "$dir.log"
done
