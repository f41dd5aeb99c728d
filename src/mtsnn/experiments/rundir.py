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
from pathlib import Path

from ..checkpoint import atomic_write
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
