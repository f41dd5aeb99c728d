#!/usr/bin/env bash
# The sweeps behind Figures 6-9 at a CPU budget: Fashion-MNIST MLP (784-400-400-10),
# 10 epochs, no cropping, seed 0 (the paper: CIFAR-10, 7-layer CNN, 100-200 epochs, GPU).
# Resumable: rerunning skips finished points. Run from the repository root:
#   bash results/figures/run_sweeps.sh && ./run mtsnn figures --out results/figures
set -eu
export MTSNN_DATA=${MTSNN_DATA:-../shared/datasets}
for fig in fig6 fig7 fig8 fig9; do
    ./run mtsnn sweep $fig --preset fmnist-mlp --epochs 10 --crop-padding 0 --out results/figures/sweeps
done
