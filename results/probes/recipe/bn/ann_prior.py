"""A prior for batch normalisation on mnist-cnn (issue 16), before building it into the SNN:
does BN after each hidden weight layer lift mnist-cnn's ANN twin (15C5-P2-40C5-P2-300, ReLU)
on the 5,000 held-out training images? Runs `mtsnn train mnist-cnn --recipe fast --ann
--val-holdout 5000` with the twin's modules rebuilt with BatchNorm2d/BatchNorm1d after each
hidden convolution and fully connected layer. Usage (from the repository root):

    ./run python results/probes/recipe/bn/ann_prior.py RUN_DIR [--bn] [more train options]
"""

import sys

from torch import nn

import mtsnn.experiments.train as train
from mtsnn.experiments.cli import main

plain = train.build_model


def with_bn(cfg):
    model = plain(cfg)
    modules = list(model)
    out = []
    for index, module in enumerate(modules):
        out.append(module)
        if index < len(modules) - 1 and isinstance(module, nn.Conv2d):
            out.append(nn.BatchNorm2d(module.out_channels))
        elif index < len(modules) - 1 and isinstance(module, nn.Linear):
            out.append(nn.BatchNorm1d(module.out_features))
    return nn.Sequential(*out)


if __name__ == "__main__":
    run_dir, *rest = sys.argv[1:]
    if "--bn" in rest:
        rest.remove("--bn")
        train.build_model = with_bn
    argv = ["train", "mnist-cnn", "--recipe", "fast", "--ann", "--val-holdout", "5000", "--run-dir", run_dir, *rest]
    sys.exit(main(argv))
