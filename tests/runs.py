"""Helpers for tests that train: where the real data is, the CLI in a subprocess, and a run's final state."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtsnn.checkpoint import load_checkpoint, save_checkpoint
from mtsnn.config import TrainConfig, build_model

SHARED = Path(os.environ.get("MTSNN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
# what a checkpoint of a stopped run holds beside its config (mtsnn.experiments.rundir.Progress)
PROGRESS = {
    "epoch": 2,
    "batch": 0,
    "wall_seconds": 1.0,
    "param_groups": [{"lr": 0.005}],
    "acc": {"loss_sum": 0.0, "correct": 0, "total": 0, "seconds": 0.0},
}
needs_fmnist = pytest.mark.skipif(
    not (SHARED / "FashionMNIST" / "raw").is_dir(), reason=f"real Fashion-MNIST not found under {SHARED}"
)
TIMING = ("epoch_seconds", "images_per_second")  # metrics that differ between identical runs


def cli_env(**extra) -> dict:
    return {**os.environ, "MTSNN_DATA": str(SHARED), "PYTHONUNBUFFERED": "1", **extra}


def mtsnn(*args, **kwargs) -> subprocess.Popen:
    """``mtsnn ARGS`` in a subprocess, stdout and stderr together in ``.stdout``."""
    return subprocess.Popen(
        [sys.executable, "-m", "mtsnn.experiments.cli", *map(str, args)],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def mtsnn_done(*args, timeout=300) -> tuple[int, str]:
    """(exit code, output) of ``mtsnn ARGS`` run to its end."""
    p = mtsnn(*args)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def final_state(run_dir) -> tuple[dict, dict, list[dict]]:
    """(checkpoint tensors, checkpoint state, metrics rows without timings) of a run."""
    tensors, state = load_checkpoint(Path(run_dir) / "checkpoint.safetensors")
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return tensors, state, [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_run(a, b) -> None:
    """Runs ``a`` and ``b`` ended with bitwise-equal weights and optimizer state, at the same
    point, with the same metrics."""
    ta, sa, ra = final_state(a)
    tb, sb, rb = final_state(b)
    assert set(ta) == set(tb)
    for name in ta:
        if name != "rng/torch":
            assert torch.equal(ta[name], tb[name]), f"{name} differs"
    assert ra == rb and (sa["epoch"], sa["batch"]) == (sb["epoch"], sb["batch"])


# fmnist-mlp on 512 images: 4 batches an epoch, a few seconds a run
SMALL = ["--train-limit", "512", "--test-limit", "500", "--deterministic", "--seed", "3"]


def copy_run(run_dir: Path, to: Path) -> Path:
    """A copy of a run directory, without the lock file of whoever held it."""
    from mtsnn.experiments.rundir import LOCK

    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns(LOCK))
    return to


def in_namespace(script: str) -> subprocess.CompletedProcess:
    """Run a bash script as root of its own user and mount namespace, where it may mount a small
    or read-only tmpfs: real kernel errors (ENOSPC, EROFS) without touching the machine. ``$PY``
    is this Python. Skips where the kernel does not allow such namespaces."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("user and mount namespaces (unshare -rm) are not available here")
    return subprocess.run(
        ["unshare", "-rm", "bash", "-euc", script],
        env=cli_env(PY=sys.executable),
        capture_output=True,
        text=True,
        timeout=300,
    )


def save_trained(path, always_seven=True, finished=True, ann=True, **settings) -> TrainConfig:
    """The run directory of a 784-10 network, the ANN twin unless ``ann`` is False: with
    ``always_seven``, no weights and a bias of 10 on class 7 alone (the ANN's logits are 10 for
    class 7 and 0 for the others, whatever the image; the SNN's class 7 fires its most spikes
    at each step, the others none); otherwise random weights, whose answers depend on the image.
    ``finished``: with the summary.json of a run that ended."""
    cfg = TrainConfig(spec="784-10", ann=ann, **settings).validate()
    path.mkdir(exist_ok=True)
    torch.manual_seed(cfg.seed + 1)  # random weights differ by seed
    model = build_model(cfg)
    if always_seven:
        with torch.no_grad():
            for name, tensor in model.named_parameters():
                tensor.zero_()
                if name.endswith("bias"):
                    tensor[7] = 10.0
    tensors = {f"model/{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_checkpoint(path / "checkpoint.safetensors", tensors, {"config": dataclasses.asdict(cfg), **PROGRESS})
    if finished:
        (path / "summary.json").write_text(json.dumps({"preset": cfg.preset, "epochs": 2, "wall_seconds": 1.0}))
    return cfg
