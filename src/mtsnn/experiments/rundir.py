"""The run directory: its files, their only reader and writer, and one process at a time.

A run directory holds ``config.toml`` (every setting, :data:`CONFIG`), ``metrics.jsonl`` (one
JSON object per epoch, :data:`METRICS`), ``checkpoint.safetensors`` (written atomically after
every epoch, :data:`CHECKPOINT`) and, once the run ends, ``summary.json`` (:data:`SUMMARY`).
Each is written whole and atomically (a kill leaves the old file or the new one).

Two trainers writing one run directory would interleave their metrics rows and
overwrite each other's checkpoints, and both would exit 0. A trainer therefore
holds an exclusive ``flock`` on ``RUN_DIR/.lock`` for as long as it runs, with its
process id written inside for the message the next one gets. The kernel drops the
lock when its holder's process ends in any way (SIGKILL included), so a lock file
left behind by a dead process never blocks: only a live holder does.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import CheckpointError, atomic_write
from ..config import TrainConfig, dump_toml, load_toml

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
SUMMARY = "summary.json"
LOCK = ".lock"


def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    atomic_write(run_dir / CONFIG, [dump_toml(dataclasses.asdict(cfg)).encode()])


def read_config(run_dir: Path) -> dict:
    """The settings ``config.toml`` holds, as written (older runs may lack newer settings)."""
    return load_toml(run_dir / CONFIG)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl`` (none if it is missing); ValueError naming the
    file and line if one is not a JSON object with an ``epoch``."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not JSON ({e})") from None
        if not isinstance(row, dict) or type(row.get("epoch")) is not int:
            raise ValueError(f"{path}, line {number}: not a metrics row (a JSON object with an integer epoch)")
        rows.append(row)
    return rows


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """The whole file, atomically: a kill leaves the old rows or the new, never a torn line."""
    atomic_write(run_dir / METRICS, ["".join(json.dumps(row) + "\n" for row in rows).encode()])


def read_summary(run_dir: Path) -> dict | None:
    """``summary.json``, or None for a run that has not ended."""
    path = run_dir / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write(run_dir / SUMMARY, [json.dumps(summary, indent=2).encode()])


class RunDirBusy(ValueError):
    """Another live process holds the run directory; the message names it and its process id."""


def lock(run_dir: str | Path):
    """Take ``run_dir``'s lock (creating the folder); return the open lock file, which holds
    the lock until it is closed or the process ends. Raise :class:`RunDirBusy` naming the
    holder's process id if another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirBusy(
            f"{run_dir} is in use by process {holder} (it holds {run_dir / LOCK}); wait for it "
            "to end, stop it, or choose another --run-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


# The checkpoint: tensors (the model's, the optimizer's state, the random generator's) and
# the progress beside them, in the safetensors metadata (mtsnn.checkpoint writes both).


@dataclass
class Progress:
    """Where a run stands: what a checkpoint holds beside its tensors (:func:`state_tensors`).
    A new field goes here, in :meth:`from_state`'s check, and nowhere else."""

    config: dict  # the run's settings (TrainConfig as a dict)
    epoch: int  # epochs finished
    batch: int  # batches of the next epoch finished
    acc: dict  # that epoch's running sums: loss_sum, correct, total, seconds
    wall_seconds: float  # training time so far
    planned: bool  # whether a time-budget run has planned its epochs
    param_groups: list  # the optimizer's (learning rate, betas, ...)

    def to_state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict, path: Path) -> Progress:
        """The progress a checkpoint's metadata holds; CheckpointError naming ``path`` unless it
        says where the run stopped. (``planned`` is missing from checkpoints older than time
        budgets: those runs had none, or had planned.)"""
        numbers = {"epoch": int, "batch": int, "wall_seconds": (int, float)}
        sums = {"loss_sum": (int, float), "correct": (int, float), "total": (int, float), "seconds": (int, float)}
        acc = state.get("acc")
        ok = (
            all(
                isinstance(state.get(k), t) and not isinstance(state.get(k), bool) and state[k] >= 0
                for k, t in numbers.items()
            )
            and isinstance(acc, dict)
            and all(isinstance(acc.get(k), t) for k, t in sums.items())
            and isinstance(state.get("param_groups"), list)
            and all(isinstance(group, dict) for group in state["param_groups"])
            and isinstance(state.get("config"), dict)
        )
        if not ok:
            raise CheckpointError(
                f"{path}: its saved progress is incomplete or malformed (need epoch, batch, "
                f"wall_seconds >= 0, the epoch's sums and the optimizer's param_groups)"
            )
        planned = state.get("planned", not state["config"].get("time_budget"))
        return cls(
            state["config"], state["epoch"], state["batch"], acc, state["wall_seconds"], planned, state["param_groups"]
        )


def saved_config(state: dict, path: Path) -> TrainConfig:
    """The config a checkpoint's state holds; CheckpointError naming ``path`` if it is not a valid one."""
    try:
        return TrainConfig(**state["config"]).validate()
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: its saved config is not a valid mtsnn config ({type(e).__name__}: {e})"
        ) from None


def state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: ``model/NAME``, ``optim/INDEX/KEY`` and ``rng/torch``."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim/{index}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng/torch"] = torch.get_rng_state()
    return tensors


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]


def model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict inside a checkpoint's tensors."""
    return {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict, param_groups: list) -> None:
    """Load :func:`state_tensors`' tensors and the saved ``param_groups`` into ``model`` and ``optimizer``."""
    model.load_state_dict(model_state(tensors))
    optim_state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            optim_state.setdefault(int(index), {})[key] = value
    # The saved groups hold the training state (lr, betas, ...); how the update runs (fused or
    # not) is this process's choice, so a checkpoint from another device or version resumes.
    groups = [
        {**saved, **{k: now[k] for k in ("fused", "foreach")}}
        for saved, now in zip(param_groups, optimizer.param_groups)
    ]
    optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
    # Checkpoints hold contiguous tensors; Adam's moments must take their parameter's layout
    # (channels-last convolutions), as the fused update walks them in memory order.
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                param_state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
    torch.set_rng_state(tensors["rng/torch"])
