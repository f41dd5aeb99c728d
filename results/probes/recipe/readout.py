"""How to read the output layer: validation accuracy of trained probe runs read by spike
counts alone (ties to the lowest class: the paper's decoding) and with ties broken by the
output neurons' residual membrane potential (``readout="residual"``). The same weights, the
same 5,000 held-out training images; only the decoding differs. Also counts how often the
two largest counts tie.

    python results/probes/recipe/readout.py RUN_DIR...
"""

import sys

import torch

from mtsnn import data as datasets
from mtsnn.experiments.evaluate import load_trained
from mtsnn.experiments.objective import evaluate


def tied(model, loader) -> float:
    """% of samples whose two largest summed output counts are equal."""
    ties = total = 0
    with torch.no_grad():
        for images, _ in loader.epoch(0):
            top = model(images).sum(0).topk(2, 1).values
            ties += (top[:, 0] == top[:, 1]).sum().item()
            total += len(top)
    return 100.0 * ties / total


def main(runs):
    print("| run | val % read by counts | val % read by counts, ties by residual | samples with tied counts % |")
    print("|---|---|---|---|")
    for run in runs:
        model, cfg = load_trained(run)
        if cfg.ann or not cfg.val_holdout:
            continue
        train = datasets.load(cfg.dataset, "train", root=cfg.data_root or None)
        loader = datasets.DeviceLoader(train.hold_out(cfg.val_holdout)[1], 1000, train=False)
        accs = [evaluate(model, loader, cfg.replace(readout=readout))["acc"] for readout in ("counts", "residual")]
        print(f"| {run} | {accs[0]:.2f} | {accs[1]:.2f} | {tied(model, loader):.2f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
