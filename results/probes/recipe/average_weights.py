"""Weight averaging, measured after the fact: a probe run's checkpoints of its last epochs
(copied as they were written, ``DIR/epochN.safetensors``), their weights averaged over the
last K epochs, scored on the run's 5,000 held-out training images. K=1 is the run itself.
Averaging is not a training setting of mtsnn: this asks whether it would pay to make it one.

    python results/probes/recipe/average_weights.py RUN_DIR SNAPSHOT_DIR K...
"""

import sys
from pathlib import Path

import torch

from mtsnn import data as datasets
from mtsnn.config import build_model
from mtsnn.experiments.objective import evaluate
from mtsnn.experiments.rundir import read_weights


def main(run: str, snapshots: str, ks: list[int]):
    files = sorted(Path(snapshots).glob("epoch*.safetensors"), key=lambda p: int(p.stem[5:]))
    weights, cfg = zip(*(read_weights(f) for f in files))
    cfg = cfg[-1]
    train = datasets.load(cfg.dataset, "train", root=cfg.data_root or None)
    loader = datasets.DeviceLoader(train.hold_out(cfg.val_holdout)[1], 1000, train=False)
    print(f"{run}: checkpoints of epochs {files[0].stem[5:]}-{files[-1].stem[5:]}")
    print("| epochs averaged | validation % |")
    print("|---|---|")
    for k in ks:
        model = build_model(cfg)
        last = weights[-k:]
        model.load_state_dict({name: torch.stack([w[name].float() for w in last]).mean(0) for name in last[-1]})
        print(f"| last {k} | {evaluate(model.eval(), loader, cfg)['acc']:.2f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [int(k) for k in sys.argv[3:]])
