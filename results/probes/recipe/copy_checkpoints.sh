#!/usr/bin/env bash
# Keep a copy of each epoch's checkpoint of a running probe, for average_weights.py: RUN_DIR
# OUT_DIR PID copies RUN_DIR/checkpoint.safetensors to OUT_DIR/epochN.safetensors once
# metrics.jsonl has N >= 30 rows (the checkpoint is written just after its row, atomically;
# waiting 3 s sufficed: the copies of epochs 30, 33 and 36 of e60-drop0.2 held those epochs),
# until the training process PID ends. Copy the last one by hand after it:
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
