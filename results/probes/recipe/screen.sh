#!/usr/bin/env bash
# Screen for the fast recipe (issue 16): every run trains on 55,000 training images and is
# scored on the 5,000 it holds out (--val-holdout 5000; the test set is never read). Each
# line is PRESET NAME [settings on top of --recipe fast]; a finished run is kept, so the
# script can be given again. Run from the repository root:
#   nohup bash results/probes/recipe/screen.sh LIST > results/probes/recipe/screen.log 2>&1 &
# where LIST is a file of such lines (screen-mlp.txt, screen-cnn.txt, ...).
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
while read -r preset name settings; do
    [ -z "$preset" ] || [ "${preset:0:1}" = "#" ] && continue
    dir="results/probes/recipe/$preset/$name"
    [ -f "$dir/summary.json" ] && continue
    mkdir -p "$dir"
    echo "$(date +%H:%M) $preset $name $settings"
    # shellcheck disable=SC2086
    ./run mtsnn train "$preset" --recipe fast --val-holdout 5000 --seed 0 --run-dir "$dir" $settings \
        >> "$dir/console.log" 2>&1 || echo "  failed: see $dir/console.log"
    tail -1 "$dir/console.log"
done < "$1"
