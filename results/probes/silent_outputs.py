"""Silent output neurons in the first epoch: which classes' output neurons never fire.

For each seed, train one epoch of PRESET with the preset's settings (plus OVERRIDES) and,
after a few chosen steps, count the output neurons that give no spike on 1000 training
images. A silent output neuron's class is never predicted; with f2 it gets (almost) no
gradient once far below threshold. Prints one line per seed: (step, silent classes).

    python results/probes/silent_outputs.py PRESET SEEDS [OVERRIDES]
    python results/probes/silent_outputs.py mnist-cnn 0,1,2 "{'output_surrogate': 'arctan'}"
"""

import ast
import sys

import torch

from mtsnn import data as datasets
from mtsnn.config import build_model, preset
from mtsnn.experiments.objective import OutputCurrent, loss_fn
from mtsnn.experiments.optimizer import learning_rate, make_optimizer

CHECKED_STEPS = (5, 10, 20, 50, 100, 200, 300)


def silent_classes(model, images) -> list[int]:
    with torch.no_grad():
        counts = model(images).sum(0)
    return (counts.amax(0) == 0).nonzero().flatten().tolist()


def probe(name: str, seed: int, overrides: dict) -> list[tuple[int, list[int]]]:
    cfg = preset(name, seed=seed, **overrides)
    train_set = datasets.load(cfg.dataset, "train", root=cfg.data_root or None)
    loader = datasets.DeviceLoader(train_set, cfg.batch_size, train=True, seed=seed, crop_padding=cfg.crop_padding)
    images = next(iter(datasets.DeviceLoader(train_set, 1000, train=False).epoch(0)))[0]
    torch.manual_seed(seed)  # as mtsnn.experiments.train.Run does before building the model
    model = build_model(cfg)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    history = [(0, silent_classes(model, images))]
    for step, (x, y) in enumerate(loader.epoch(0), start=1):
        with OutputCurrent(model) as output_current:  # for the output_floor term, as mtsnn.experiments.train.Run does
            loss = loss_fn(model(x), y, cfg, output_current.current())
        optimizer.zero_grad()
        loss.backward()
        for group in optimizer.param_groups:  # as mtsnn.experiments.train.Run does (a no-op for a constant rate)
            group["lr"] = learning_rate(cfg, step - 1, len(loader))
        optimizer.step()
        if step in CHECKED_STEPS or step == len(loader):
            history.append((step, silent_classes(model, images)))
    return history


def main():
    name, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    overrides = ast.literal_eval(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3].strip() else {}
    torch.set_flush_denormal(True)
    for seed in seeds:
        history = probe(name, seed, overrides)
        print(f"{name} seed {seed} {overrides or 'preset'}: {history}", flush=True)


if __name__ == "__main__":
    main()
