#!/usr/bin/env bash
# The fast recipe distilled from its tuned ANN twin (issue 16): for each seed, the twin
# (`--recipe fast --ann`, trained on all 60,000 training images) is trained first as the
# teacher, under results/teachers/ (not a report row: the twin's rows are results/runs/
# PRESET-fast-ann/), then the SNN (`--recipe fast --teacher TWIN --distill A`) under
# results/runs/PRESET-fast-distilledA/. A is the share chosen on the validation split
# (results/probes/recipe/README.md). Resumable like plan-fast.sh: a run with a summary.json is
# done, one with a checkpoint continues from it, others start. Checkpoints are not committed: on
# a fresh clone, a student still to train needs its teacher's folder removed and trained again
# (a teacher with a summary.json but no checkpoint stops the student with that file named). A
# teacher that did not finish (stopped, failed) leaves its student unstarted.
# Run from the repository root:
#   nohup bash results/runs/plan-distilled.sh PRESET A > results/runs/plan-distilled.log 2>&1 &
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
preset=$1 share=$2
train() {  # train DIR SETTINGS...
    local dir=$1
    shift
    [ -f "$dir/summary.json" ] && return
    mkdir -p "$dir"
    echo "$(date +%H:%M) $dir"
    if [ -f "$dir/checkpoint.safetensors" ]; then
        ./run mtsnn train --resume "$dir" >> "$dir/console.log" 2>&1
    else
        ./run mtsnn train "$preset" --recipe fast --run-dir "$dir" "$@" >> "$dir/console.log" 2>&1
    fi
    tail -1 "$dir/console.log"
}
for seed in 0 1 2; do
    teacher="results/teachers/$preset-fast-ann/seed$seed"
    train "$teacher" --ann --seed "$seed"
    if [ ! -f "$teacher/summary.json" ]; then
        echo "  $teacher has not finished: its student is not started"
        continue
    fi
    train "results/runs/$preset-fast-distilled$share/seed$seed" --seed "$seed" --teacher "$teacher" --distill "$share"
done
