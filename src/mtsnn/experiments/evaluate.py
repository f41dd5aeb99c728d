"""Evaluate a trained run: accuracy, spikes per neuron per layer, parameter count; and keep
its weights, alone, for use without the run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .. import data as datasets
from .. import zoo
from ..checkpoint import atomic_write, file_sha256, save_tensors
from ..config import TrainConfig, build_model, dump_toml, usable_device
from ..energy import ann_operations, count_over_loader
from ..integer import IntegerNetwork
from .objective import EVAL_BATCH, evaluate
from .rundir import CHECKPOINT, read_weights


def load_trained(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The model and config of a run directory, a checkpoint file, or a shipped model
    (``pretrained:NAME``, :mod:`mtsnn.zoo`: its sha256 checked)."""
    if name := zoo.shipped(path):
        return zoo.load(name, device)
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    weights, saved = read_weights(path)
    cfg = saved.replace(device=device).validate()
    model = build_model(cfg)
    model.load_state_dict(weights)
    return model.to(usable_device(device)), cfg


def evaluate_checkpoint(
    path: str | Path,
    data_root: str | None = None,
    device: str = "cpu",
    energy: bool = False,
    test_limit: int = 0,
    int8: bool = False,
) -> dict:
    """Test accuracy, spikes per neuron per layer, parameters; with ``energy``, the
    operation counts and energy estimate of :mod:`mtsnn.energy` averaged over the test set
    (its first ``test_limit`` images if > 0); with ``int8``, also the accuracy of the
    integer-only network (:mod:`mtsnn.integer`) on the same images and how often the two agree."""
    if test_limit < 0:
        raise ValueError(f"test_limit={test_limit} (need >= 0; 0 means the whole test set)")
    model, cfg = load_trained(path, device)
    test_set = datasets.load(cfg.dataset, "test", root=data_root or cfg.data_root or None, download=True)
    if test_limit:
        test_set = test_set.subset(test_limit)
    loader = datasets.DeviceLoader(test_set, EVAL_BATCH, train=False, device=torch.device(device))
    result = evaluate(model, loader, cfg)
    steps = 1 if cfg.ann else cfg.T
    extra = {}
    if energy:
        extra["energy"] = ann_operations(cfg.spec, cfg.input_shape) if cfg.ann else count_over_loader(model, loader)
    if int8:
        if cfg.ann:
            raise ValueError(f"{path} is an ANN twin: --int8 is the SNN's integer-only path")
        train_set = datasets.load(cfg.dataset, "train", root=data_root or cfg.data_root or None, download=True)
        calibration = train_set.images[:INT8_CALIBRATION_IMAGES]
        extra["int8_test_acc"], extra["int8_agreement"] = integer_accuracy(model, loader, test_set, calibration)
    if name := zoo.shipped(path):  # what was measured when the weights were kept
        extra["recorded_test_acc"] = zoo.record(name)["test_acc"]
    return {
        **extra,
        "preset": cfg.preset,
        "spec": cfg.spec,
        "T": None if cfg.ann else cfg.T,
        "ann": cfg.ann,
        "test_acc": result["acc"],
        "test_images": len(test_set),
        "silent_outputs": result["silent_outputs"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "spikes_per_neuron": [rate * steps for rate in result["firing_rate"]],
    }


# Training images the integer path calibrates its bias correction on (mtsnn.integer); on the
# 150-epoch fmnist-mlp, 1,000 and 5,000 gave the same agreement on 30,000 other training images.
INT8_CALIBRATION_IMAGES = 1000


def integer_accuracy(
    model: torch.nn.Module, loader, test_set: datasets.Dataset, calibration: torch.Tensor | None
) -> tuple[float, float]:
    """(accuracy %, agreement %) of ``model``'s :class:`~mtsnn.integer.IntegerNetwork`, its
    biases calibrated on the raw training images ``calibration`` (``mtsnn eval --int8``: the
    first :data:`INT8_CALIBRATION_IMAGES`; None: no bias correction), on ``test_set``'s raw pixels.
    Agreement: the share of images on which the integer network and the float one (its
    ``loader`` batches, in the same order) predict the same class, both by the most output
    spikes."""
    with torch.no_grad():
        floats = torch.cat([model(images).sum(0).argmax(1).cpu() for images, _ in loader.epoch(0)])
    integer = IntegerNetwork(model.cpu(), *datasets.NORMALISATION[test_set.name], calibration=calibration)
    correct = agree = 0
    for begin in range(0, len(test_set), EVAL_BATCH):
        batch = slice(begin, begin + EVAL_BATCH)
        predicted = integer(test_set.images[batch]).sum(0).argmax(1)
        correct += (predicted == test_set.labels[batch]).sum().item()
        agree += (predicted == floats[batch]).sum().item()
    return 100.0 * correct / len(test_set), 100.0 * agree / len(test_set)


def keep_weights(path: str | Path, out: str | Path, report: dict) -> dict:
    """Write the trained weights of run ``path`` as ``OUT.safetensors`` (the model's tensors
    only: no optimizer state, a few MB; the config in its metadata), with ``OUT.toml`` (the
    config) and ``OUT.json`` (``report``'s test accuracy, the weights' sha256 and the run they
    came from) beside it. Returns what ``OUT.json`` holds."""
    model, cfg = load_trained(path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {**dataclasses.asdict(cfg), "device": "cpu", "data_root": ""}
    weights = out.with_name(out.name + ".safetensors")
    save_tensors(weights, model.state_dict(), {"mtsnn_config": json.dumps(config)})
    atomic_write(out.with_name(out.name + ".toml"), [dump_toml(config).encode()])
    record = {
        "weights": weights.name,
        "sha256": file_sha256(weights),
        "preset": cfg.preset,
        "recipe": cfg.recipe,
        "ann": cfg.ann,
        "spec": cfg.spec,
        "T": cfg.T,
        "test_acc": report["test_acc"],
        "silent_outputs": report["silent_outputs"],
        "source": str(path),
    }
    atomic_write(out.with_name(out.name + ".json"), [json.dumps(record, indent=2).encode()])
    return record
