#!/usr/bin/env bash
# Keep a copy of each epoch's checkpoint of a running probe, for average_weights.py: RUN_DIR
# OUT_DIR PID copies RUN_DIR/checkpoint.safetensors to OUT_DIR/epochN.safetensors once
# metrics.jsonl has N >= 30 rows (the checkpoint follows its row within a second; the
# write is atomic), until the training process PID ends. Copy the last one by hand after it:
#   nohup bash results/probes/recipe/copy_checkpoints.sh RUN_DIR OUT_DIR PID > /dev/null 2>&1 &
set -u
run=$1 out=$2 pid=$3
mkdir -p "$out"
while kill -0 "$pid" 2>/dev/null; do
    n=$(wc -l < "$run/metrics.jsonl")
    if [ "$n" -ge 30 ] && [ ! -f "$out/epoch$n.safetensors" ]; then
        sleep 3
        cp "$run/checkpoint.safetensors" "$out/epoch$n.safetensors"
    fi
    sleep 5
done
