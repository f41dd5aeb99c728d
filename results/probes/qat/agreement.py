"""Float against integer-only inference (mtsnn.integer) on a run's validation images.

    MTSNN_DATA=../shared/datasets ./run python results/probes/qat/agreement.py RUN...

For each run directory trained with --val-holdout: its float accuracy on the held-out images,
its integer network's (biases calibrated on the first 1,000 training images the run trained
on, as `mtsnn eval --int8` does), and the share of held-out images on which the two predict
the same class. A markdown row per run."""

import sys

import torch

from mtsnn import data as datasets
from mtsnn.experiments.evaluate import INT8_CALIBRATION_IMAGES, integer_accuracy, load_trained
from mtsnn.experiments.objective import evaluate

print("| run | float % | int8 % | same prediction % |\n|---|---|---|---|")
for run in sys.argv[1:]:
    model, cfg = load_trained(run)
    if not cfg.val_holdout:
        sys.exit(f"{run} held out no training images (--val-holdout): its scores would be on test images")
    train_set, held_out = datasets.load(cfg.dataset, "train", root=cfg.data_root or None).hold_out(cfg.val_holdout)
    loader = datasets.DeviceLoader(held_out, 1000, train=False, device=torch.device("cpu"))
    float_acc = evaluate(model, loader, cfg)["acc"]
    int8_acc, agreement = integer_accuracy(model, loader, held_out, train_set.images[:INT8_CALIBRATION_IMAGES])
    print(f"| {run} | {float_acc:.2f} | {int8_acc:.2f} | {agreement:.2f} |", flush=True)
