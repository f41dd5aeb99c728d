#!/usr/bin/env bash
# The fast recipe distilled (issue 16), seeds 0-2: PRESET A [TEACHERS [FROM]]. A is the share of
# the loss given to the teachers (--distill A), chosen on the validation split
# (results/probes/recipe/README.md). FROM (default PRESET) is the preset whose networks teach:
# fmnist-cnn's twins may teach fmnist-mlp (`twins` only). Settings after FROM (give FROM, PRESET
# itself for the default, to pass them) go to the students only (`--epochs 60`); the students'
# folder names do not carry them, and a stopped student resumes with the settings it started
# with. TEACHERS:
#   twin  (default) each seed's tuned ANN twin (`--recipe fast --ann`, all 60,000 training
#         images) teaches that seed's SNN; students go to results/runs/PRESET-fast-distilledA/.
#   twins the three twins teach each SNN as an ensemble (--teacher A,B,C); students go to
#         results/runs/PRESET-fast-ens3-distilledA/, or PRESET-fast-FROM-ens3-distilledA/.
#   runs  the fast recipe's own three SNN test runs, results/runs/PRESET-fast/seedN, teach each
#         SNN as an ensemble; students go to results/runs/PRESET-fast-snn3-distilledA/.
# Twins are trained under results/teachers/ (not report rows: the twin's rows are results/runs/
# PRESET-fast-ann/). Resumable like plan-fast.sh: a run with a summary.json is done, one with a
# checkpoint continues from it, others start. Checkpoints are not committed: on a fresh clone a
# teacher with a summary.json but no checkpoint stops its student with that file named. A twin
# under results/teachers/ is trained again once its folder is removed; the SNN test runs of
# `runs` are report rows, never retrained here: train them again elsewhere and keep their
# results. A student whose teachers have not all finished is not started. Run from the repository root:
#   nohup bash results/runs/plan-distilled.sh PRESET A [TEACHERS [FROM [SETTINGS...]]] >> results/runs/plan-distilled.log 2>&1 &
set -u
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
preset=$1 share=$2 kind=${3:-twin} from=${4:-$1}
shift $(($# < 4 ? $# : 4))
settings=("$@")  # the students' own settings beyond the fast recipe, after FROM
train() {  # train PRESET DIR SETTINGS...
    local net=$1 dir=$2
    shift 2
    [ -f "$dir/summary.json" ] && return
    mkdir -p "$dir"
    echo "$(date +%H:%M) $dir"
    if [ -f "$dir/checkpoint.safetensors" ]; then
        ./run mtsnn train --resume "$dir" >> "$dir/console.log" 2>&1
    else
        ./run mtsnn train "$net" --recipe fast --run-dir "$dir" "$@" >> "$dir/console.log" 2>&1
    fi
    tail -1 "$dir/console.log"
}
finished() {  # finished RUN...: each has a summary.json, or its student is not started
    for run in "$@"; do
        [ -f "$run/summary.json" ] || { echo "  $run has not finished: its student is not started"; return 1; }
    done
}
[ "$from" = "$preset" ] || [ "$kind" = twins ] || { echo "FROM ('$from') needs TEACHERS twins, not '$kind'" >&2; exit 2; }
case $kind in
    twin) students="results/runs/$preset-fast-distilled$share" ;;
    twins) students="results/runs/$preset-fast$([ "$from" = "$preset" ] || echo "-$from")-ens3-distilled$share" ;;
    runs) students="results/runs/$preset-fast-snn3-distilled$share" ;;
    *) echo "TEACHERS must be twin, twins or runs, not '$kind'" >&2; exit 2 ;;
esac
ensemble=()
for seed in 0 1 2; do
    case $kind in
        runs) ensemble+=("results/runs/$preset-fast/seed$seed") ;;
        *)
            twin="results/teachers/$from-fast-ann/seed$seed"
            [ "$kind" = twin ] || { train "$from" "$twin" --ann --seed "$seed"; ensemble+=("$twin"); }
            ;;
    esac
done
for seed in 0 1 2; do
    if [ "$kind" = twin ]; then
        teachers="results/teachers/$preset-fast-ann/seed$seed"
        train "$preset" "$teachers" --ann --seed "$seed"
        finished "$teachers" || continue
    else
        teachers=$(IFS=,; echo "${ensemble[*]}")
        finished "${ensemble[@]}" || continue
    fi
    train "$preset" "$students/seed$seed" --seed "$seed" --teacher "$teachers" --distill "$share" "${settings[@]}"
done
