"""Why mtsnn offers no SGD: the root-mean-square of each parameter's gradient of the recipe's
loss (eq. 6 plus the output floor) on the first training batches, at eq. (17)'s start and at
the shipped weights. One SGD rate moves every weight by rate times its gradient, so where the
layers' gradients differ by orders of magnitude a rate that moves one layer leaves another
still or blows it up; Adam divides each weight's step by that weight's own gradient scale.

    python results/probes/recipe/gradient_scale.py PRESET [BATCHES]
"""

import sys

import torch

from mtsnn import data as datasets
from mtsnn.config import build_model, preset
from mtsnn.experiments.evaluate import load_trained
from mtsnn.experiments.objective import OutputCurrent, loss_fn


def gradient_rms(model, cfg, batches) -> dict[str, tuple[float, float]]:
    """Per parameter: (rms of its value, rms over the batches of its gradient)."""
    squares = {name: 0.0 for name, _ in model.named_parameters()}
    for images, labels in batches:
        with OutputCurrent(model) as output_current:
            loss = loss_fn(model(images), labels, cfg, output_current.current())
        model.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            squares[name] += p.grad.pow(2).mean().item() / len(batches)
    values = {name: p.detach().pow(2).mean().sqrt().item() for name, p in model.named_parameters()}
    return {name: (values[name], squares[name] ** 0.5) for name in values}


def main():
    name, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4
    cfg = preset(name, recipe="fast", batch_norm=False)  # as measured: before round 49 gave mnist-cnn batch norm
    train_set = datasets.load(cfg.dataset, "train", root=cfg.data_root or None)
    loader = datasets.DeviceLoader(train_set, cfg.batch_size, train=True, seed=0, crop_padding=cfg.crop_padding)
    batches = [batch for _, batch in zip(range(count), loader.epoch(0))]
    torch.manual_seed(0)
    start = build_model(cfg)
    shipped, _ = load_trained(f"pretrained:{name}")
    print(f"{name}, fast recipe, {count} batches of {cfg.batch_size} training images")
    print("| parameter | shape | rms of w, start | of its gradient | rms of w, shipped | of its gradient |")
    print("|---|---|---|---|---|---|")
    first, last = gradient_rms(start, cfg, batches), gradient_rms(shipped, cfg, batches)
    for param, p in start.named_parameters():
        (w0, g0), (w1, g1) = first[param], last[param]
        print(f"| {param} | {tuple(p.shape)} | {w0:.3f} | {g0:.4g} | {w1:.3f} | {g1:.4g} |")
    for label, rms in (("start", first), ("shipped", last)):
        weights = [g for param, (_, g) in rms.items() if param.endswith("weight")]
        print(f"{label}: the weights' gradient rms spans {max(weights) / min(weights):.0f}x across layers")


if __name__ == "__main__":
    main()
