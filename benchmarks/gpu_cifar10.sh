#!/usr/bin/env bash
# Issue 21: the run for a lent GPU machine (one H200; one command of at most 10 minutes, no
# internet). From the repository root:
#   bash benchmarks/gpu_cifar10.sh train    # cifar10-cnn, fast recipe, 8 minutes of training time
#   bash benchmarks/gpu_cifar10.sh neuron   # the neuron benchmark: mtsnn, SpikingJelly, ReLU floor
# Writes into $OUT (default ./gpu-out): console.log, and for train metrics.jsonl, summary.json,
# config.toml and throughput.json (images/s, step time, peak memory); for neuron RESULTS.md and
# neuron_results.json. Settings: BUDGET (8m), DEVICE (cuda; cpu for a dry run), TEST_LIMIT (all),
# TRAIN_LIMIT (all), EPOCHS (at most 30, the fast recipe's), PROXY (the proxy's file, below),
# QUICK (set: a small neuron benchmark, for a dry run).
#
# Nothing is installed from the network: the script uses the machine's Python with its CUDA build
# of torch, and mtsnn from this checkout (PYTHONPATH=src; numpy is all it needs besides torch).
# The data: $MTSNN_DATA/cifar-10-batches-bin if it is there, else the CIFAR-10 JPEG proxy
# data/cifar10_jpeg75.npz.gz (carried from ../shared/datasets/cifar10-jpeg75/), unpacked here
# into the official binary layout. Results on the proxy are NOT CIFAR-10 results: label them so.
set -euo pipefail
mode=${1:-train}
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/console.log") 2>&1
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - "$DEVICE" <<'PYEOF'
import sys, torch
device = sys.argv[1]
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, device {device}:",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("this Python's torch has no usable CUDA; set PYTHON to one that has, or DEVICE=cpu for a dry run")
PYEOF

if [ "$mode" = neuron ]; then
    "$PY" benchmarks/bench_neuron.py --device "$DEVICE" --neuron-only --out "$OUT" ${QUICK:+--quick --repeats 1}
    exit 0
fi
[ "$mode" = train ] || { echo "usage: $0 train|neuron" >&2; exit 2; }

export MTSNN_DATA=${MTSNN_DATA:-$PWD/data/cifar-proxy}
if [ ! -d "$MTSNN_DATA/cifar-10-batches-bin" ]; then
    "$PY" - "${PROXY:-data/cifar10_jpeg75.npz.gz}" "$MTSNN_DATA/cifar-10-batches-bin" <<'PYEOF'
# The proxy's JPEGs into the official binary layout (1 label byte, 3072 pixel bytes: R, G, B planes)
import gzip, io, os, sys, numpy as np
source, folder = sys.argv[1], sys.argv[2]
try:
    from PIL import Image
    decode = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.uint8).transpose(2, 0, 1)
except ImportError:
    import torch, torchvision.io
    decode = lambda b: torchvision.io.decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8)).numpy()
with gzip.open(source) as f:
    pack = np.load(io.BytesIO(f.read()), allow_pickle=False)
os.makedirs(folder, exist_ok=True)
for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
    data, offsets, labels = pack[f"{split}_jpeg"], pack[f"{split}_offsets"], pack[f"{split}_labels"]
    records = np.empty((len(labels), 3073), np.uint8)
    for i in range(len(labels)):
        records[i, 0] = labels[i]
        records[i, 1:] = decode(data[offsets[i]:offsets[i + 1]].tobytes()).reshape(-1)
    for k, name in enumerate(names):
        part = records[k * len(records) // len(names):(k + 1) * len(records) // len(names)]
        part.tofile(os.path.join(folder, f"{name}.bin"))
print(f"unpacked the CIFAR-10 JPEG proxy into {folder}")
PYEOF
fi

run="$OUT/run"
options=(--recipe fast --device "$DEVICE" --amp --time-budget "${BUDGET:-8m}" --run-dir "$run")
[ -n "${EPOCHS:-}" ] && options+=(--epochs "$EPOCHS")
[ -n "${TRAIN_LIMIT:-}" ] && options+=(--train-limit "$TRAIN_LIMIT")
[ -n "${TEST_LIMIT:-}" ] && options+=(--test-limit "$TEST_LIMIT")
"$PY" -m mtsnn.experiments.cli train cifar10-cnn "${options[@]}" || echo "training stopped with exit code $?"
cp "$run"/metrics.jsonl "$run"/config.toml "$OUT"/ 2>/dev/null || true
cp "$run"/summary.json "$OUT"/ 2>/dev/null || true
"$PY" - "$run" "$OUT" <<'PYEOF'
import json, pathlib, sys
from mtsnn.experiments.rundir import read_metrics, read_summary
run, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
rows, summary = read_metrics(run), read_summary(run)
batch = 128
speed = [r.images_per_second for r in rows]
result = {"epochs": len(rows), "images_per_second": speed, "step_seconds": [batch / s for s in speed],
          "train_seconds": sum(r.epoch_seconds for r in rows), "peak_memory_mb": summary.peak_memory_mb if summary else None,
          "test_acc": rows[-1].test_acc if rows else None, "data": "CIFAR-10 JPEG proxy unless MTSNN_DATA held the real set"}
(out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
PYEOF
