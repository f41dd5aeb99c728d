"""Why the desired count of the wrong classes (``--target-false``) stays 0: where the wrong
classes' output neurons of a trained run sit. With ``target_false`` = y < 0, eq. (6) would
push down every wrong-class neuron, silent ones too, by ``-y`` times f2 at its pre-reset
potential v: a margin below threshold. With y = 0 a silent neuron gets no such push. The
lever can only matter if many wrong-class neurons sit inside f2's window (below threshold but
within about sqrt(alpha_w ln 100) = 9.6 of it for Table 1's alpha_w = 20, where f2 is above
1% of its height). This prints, per step, the share of wrong-class neurons by potential on
the first IMAGES training images (the ones the loss sees), and the mean over them of the
output layer's own surrogate (f2 in the recipe; an --output-surrogate run has its own).

    python results/probes/recipe/wrong_class_margin.py RUN [IMAGES]
    python results/probes/recipe/wrong_class_margin.py pretrained:mnist-cnn 5000
"""

import sys

import torch

from mtsnn import data as datasets
from mtsnn.experiments.evaluate import load_trained
from mtsnn.experiments.objective import OutputCurrent
from mtsnn.neuron import lif_step

BINS = (-float("inf"), -1.0, -0.5, 0.0, 0.5, 1.0, float("inf"))  # the potential, in thresholds (v / V_th)


def main():
    run, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    model, cfg = load_trained(run)
    params = model.blocks()[-1].params  # the output layer's neuron, its own surrogate included
    train_set = datasets.load(cfg.dataset, "train", root=cfg.data_root or None)
    potentials, labels = [], []
    with torch.no_grad():
        for images, y in datasets.DeviceLoader(train_set, 1000, train=False).epoch(0):
            with OutputCurrent(model) as output_current:
                model(images)
                current = output_current.current()  # [T, B, classes]
            u, steps = torch.zeros_like(current[0]), []
            for i in current:
                s, u = lif_step(i, u, params)
                steps.append(u + s * params.v_th)  # the pre-reset potential
            potentials.append(torch.stack(steps))
            labels.append(y)
            if sum(map(len, labels)) >= count:
                break
    v, y = torch.cat(potentials, 1)[:, :count], torch.cat(labels)[:count]
    wrong = torch.ones_like(v[0], dtype=torch.bool)
    wrong[torch.arange(len(y)), y] = False
    print(f"{run}: wrong-class output neurons on the first {len(y)} training images (V_th = {params.v_th})")
    heads = [f"v/V_th in [{lo:g}, {hi:g})" for lo, hi in zip(BINS, BINS[1:])]
    print("| step | " + " | ".join(heads) + f" | {params.surrogate}(v), mean | firing (count > 0) |")
    print("|---" * (len(heads) + 3) + "|")
    for t, vt in enumerate(v, start=1):
        w = vt[wrong]
        x = w / params.v_th
        shares = [((x >= lo) & (x < hi)).float().mean().item() * 100 for lo, hi in zip(BINS, BINS[1:])]
        slope = params.surrogate_fn(w).mean().item()
        firing = (x >= 1).float().mean().item() * 100
        print(f"| {t} | " + " | ".join(f"{x:.2f}%" for x in shares) + f" | {slope:.2e} | {firing:.2f}% |")


if __name__ == "__main__":
    main()
