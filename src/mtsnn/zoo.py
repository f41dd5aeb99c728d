"""Trained networks that ship with mtsnn, in ``models/`` of the repository.

Each ``NAME`` is three files, written by ``mtsnn eval RUN --keep-weights models/NAME``:
``NAME.safetensors`` (the weights only, the config in its metadata), ``NAME.toml`` (the
config) and ``NAME.json`` (the weights' sha256, the test accuracy ``mtsnn eval`` measured,
the run they came from). Loading checks the weights against that sha256 and refuses a file
that differs. ``MTSNN_MODELS`` names another folder.

Example::

    import mtsnn
    net = mtsnn.pretrained("mnist-mlp")          # a SpikingNetwork in eval mode, on the CPU
    counts = net(images)                          # [T, B, 10] spike counts for images [B, 1, 28, 28]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from .checkpoint import CheckpointError, file_sha256, load_tensors
from .config import TrainConfig, build_model, usable_device

PREFIX = "pretrained:"  # how the command line names a shipped model: mtsnn eval pretrained:mnist-mlp


def shipped(path) -> str | None:
    """``NAME`` if ``path`` names a shipped model (``pretrained:NAME``), else None."""
    path = str(path)
    return path[len(PREFIX) :] if path.startswith(PREFIX) else None


def folder() -> Path:
    """Where the shipped models are: $MTSNN_MODELS, else ``models/`` of this checkout."""
    return Path(os.environ.get("MTSNN_MODELS") or Path(__file__).resolve().parents[2] / "models")


def available() -> list[str]:
    """The names of the shipped models."""
    return sorted(p.stem for p in folder().glob("*.json")) if folder().is_dir() else []


def record(name: str) -> dict:
    """What ``NAME.json`` records of the shipped model ``name``: sha256, test accuracy, source run;
    CheckpointError naming the file if it is missing, not JSON, or lacks one of those."""
    path = folder() / f"{name}.json"
    if not path.exists():
        raise CheckpointError(
            f"no pretrained model {name!r} in {folder()} (available: {', '.join(available()) or 'none'})"
        )
    try:
        kept = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    missing = [key for key in ("weights", "sha256", "test_acc") if not isinstance(kept, dict) or key not in kept]
    if missing:
        raise CheckpointError(f"{path}: the record lacks {', '.join(missing)}")
    return kept


def load(name: str, device: str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """(model in eval mode, its config) of the shipped model ``name``; CheckpointError naming
    the file if it is missing, or differs from the sha256 its record holds; ValueError naming
    ``device`` if this machine cannot use it."""
    kept = record(name)
    target = usable_device(device)
    path = folder() / kept["weights"]
    try:
        digest = file_sha256(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if digest != kept["sha256"]:
        raise CheckpointError(
            f"{path}: sha256 {digest[:16]}... differs from {kept['sha256'][:16]}... that "
            f"{name}.json records; the weights were changed or damaged, refusing them"
        )
    tensors, metadata = load_tensors(path)
    try:
        cfg = TrainConfig(**json.loads(metadata["mtsnn_config"])).replace(device=device).validate()
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: no valid mtsnn config in its metadata ({type(e).__name__}: {e})") from None
    model = build_model(cfg)
    model.load_state_dict(tensors)
    return model.to(target).eval(), cfg


def pretrained(name: str, device: str = "cpu") -> nn.Module:
    """The shipped trained network ``name`` (see :func:`available`), in eval mode, on ``device``.

    Input: images ``[B, 1, 28, 28]`` (raw pixels normalised as in training, see
    ``mtsnn.data.NORMALISATION``). Output: spike counts ``[T, B, 10]``.

    >>> import torch
    >>> net = pretrained("mnist-cnn")
    >>> net(torch.zeros(4, 1, 28, 28)).shape
    torch.Size([2, 4, 10])
    """
    return load(name, device)[0]
