"""Tests run the neuron eagerly (no compile time per shape); test_fused.py checks the fused path."""

import os

os.environ.setdefault("MTSNN_NEURON_BACKEND", "eager")


import pytest

from runs import SHARED, SMALL, mtsnn_done


@pytest.fixture(scope="session")
def one_epoch(tmp_path_factory):
    """A finished one-epoch fmnist-mlp run on 512 images (runs.SMALL); `--resume RUN --epochs 2`
    trains it on. Tests copy it (runs.copy_run) before they change anything."""
    if not (SHARED / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"real Fashion-MNIST not found under {SHARED}")
    run_dir = tmp_path_factory.mktemp("one") / "run"
    code, out = mtsnn_done("train", "fmnist-mlp", "--epochs", "1", *SMALL, "--run-dir", run_dir)
    assert code == 0, out
    return run_dir
