"""Why output neurons go silent: their potential in the first Adam steps, with and without warm-up.

For PRESET and SEED, train the first STEPS optimizer steps with the preset's settings (plus
OVERRIDES) and print, after each step, for every output neuron the highest first-step
potential v[1] = I[1] it reaches on 1000 training images, in thresholds (v / V_th). A
neuron whose highest v is below 1 is silent on all of them; f2's window is about
sqrt(alpha_w) = 4.5 potential units wide, so at v/V_th below about 0.5 its gradient is ~0.

    python results/probes/recipe/first_steps.py PRESET SEED STEPS [OVERRIDES]
    python results/probes/recipe/first_steps.py mnist-mlp 0 8 "{'warmup_epochs': 1.0}"
"""

import ast
import sys

import torch

from mtsnn import data as datasets
from mtsnn.config import build_model, preset
from mtsnn.experiments.objective import OutputCurrent, loss_fn
from mtsnn.experiments.optimizer import learning_rate, make_optimizer


def highest_potentials(model, images) -> torch.Tensor:
    """Per output neuron, max over images of its first-step potential, in thresholds."""
    output = model.blocks()[-1]
    seen = {}
    handle = output.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(images)
        handle.remove()
        current = output.synapse(seen["x"][0], output.weight, output.bias)  # I[1], [B, classes]
    return current.amax(0) / output.params.v_th


def main():
    name, seed, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    overrides = ast.literal_eval(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4].strip() else {}
    torch.set_flush_denormal(True)
    cfg = preset(name, seed=seed, **overrides)
    train_set = datasets.load(cfg.dataset, "train", root=cfg.data_root or None)
    loader = datasets.DeviceLoader(train_set, cfg.batch_size, train=True, seed=seed, crop_padding=cfg.crop_padding)
    images = next(iter(datasets.DeviceLoader(train_set, 1000, train=False).epoch(0)))[0]
    torch.manual_seed(seed)
    model = build_model(cfg)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    print(f"{name} seed {seed} {overrides or 'preset'}: highest v[1]/V_th per output neuron (classes 0-9)")
    print(f"step  0  lr {0:.5f}  " + " ".join(f"{v:6.2f}" for v in highest_potentials(model, images).tolist()))
    for step, (x, y) in enumerate(loader.epoch(0), start=1):
        with OutputCurrent(model) as output_current:  # for the output_floor term, as mtsnn.experiments.train.Run does
            loss = loss_fn(model(x), y, cfg, output_current.current())
        optimizer.zero_grad()
        loss.backward()
        rate = learning_rate(cfg, step - 1, len(loader))
        for group in optimizer.param_groups:
            group["lr"] = rate
        optimizer.step()
        print(
            f"step {step:2d}  lr {rate:.5f}  "
            + " ".join(f"{v:6.2f}" for v in highest_potentials(model, images).tolist()),
            flush=True,
        )
        if step == steps:
            break


if __name__ == "__main__":
    main()
