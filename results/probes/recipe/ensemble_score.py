"""How well an ensemble of trained runs scores on the images they held out, beside each member:
the reference for a student distilled from them (``--teacher A,B,C``).

    python results/probes/recipe/ensemble_score.py RUN_A RUN_B RUN_C [--temperature 4]

The ensemble's class is the largest mean of the members' softmax(logits / temperature): the
target the student's loss matches (mtsnn.experiments.objective.sample_losses). Each member's
class is read as a run reads it (mtsnn.experiments.objective.predict), except that the
residual readout is not applied. The runs must hold out the same images (--val-holdout)."""

import argparse

import torch

from mtsnn import data as datasets
from mtsnn.experiments.evaluate import load_trained
from mtsnn.experiments.objective import logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--temperature", type=float, default=4.0)
    args = parser.parse_args()
    members = [load_trained(run) for run in args.runs]
    holdouts = {cfg.val_holdout for _, cfg in members}
    if len(holdouts) != 1 or 0 in holdouts or len({cfg.dataset for _, cfg in members}) != 1:
        raise SystemExit(f"the runs must hold out the same images of one data set, not {sorted(holdouts)}")
    cfg = members[0][1]
    _, held_out = datasets.load(cfg.dataset, "train", root=cfg.data_root or None).hold_out(cfg.val_holdout)
    loader = datasets.DeviceLoader(held_out, 1000, train=False, device=torch.device("cpu"))
    correct, total = torch.zeros(len(members) + 1), 0
    with torch.no_grad():
        for images, labels in loader.epoch(0):
            outputs = torch.stack([logits(model.eval()(images), c) for model, c in members])
            mean = torch.softmax(outputs / args.temperature, -1).mean(0)
            guesses = torch.cat([outputs.argmax(-1), mean.argmax(-1)[None]])
            correct += (guesses == labels).sum(1).float()
            total += labels.numel()
    for name, right in zip([*args.runs, "ensemble"], correct.tolist()):
        print(f"{100 * right / total:.2f}%  {name}")


if __name__ == "__main__":
    main()
