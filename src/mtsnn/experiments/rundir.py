"""The run directory: its files, their only reader and writer, and one process at a time.

A run directory holds ``config.toml`` (every setting, :data:`CONFIG`), ``metrics.jsonl`` (one
JSON object per epoch, :data:`METRICS`), ``checkpoint.safetensors`` (written atomically after
every epoch, :data:`CHECKPOINT`) and, once the run ends, ``summary.json`` (:data:`SUMMARY`).
Each is written whole and atomically (a kill leaves the old file or the new one). The rows and
the summary are typed (:class:`MetricsRow`, :class:`Summary`), checked when read, and
:func:`read_run` reads a whole run for reports.

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
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from ..config import TrainConfig, dump_toml, load_toml

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
SUMMARY = "summary.json"
LOCK = ".lock"
EVAL = "eval.json"  # `mtsnn eval --json` output, kept beside runs logged before rows had silent_outputs


def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    atomic_write(run_dir / CONFIG, [dump_toml(dataclasses.asdict(cfg)).encode()])


def read_config(run_dir: Path) -> dict:
    """The settings ``config.toml`` holds, as written (older runs may lack newer settings)."""
    return load_toml(run_dir / CONFIG)


SCORES = ("test_acc", "val_acc")  # a run scores the test set, or a split held out of the training images
SCORE_LABELS = {"test_acc": "test", "val_acc": "validation"}  # what the logs call each


def score_name(cfg: TrainConfig) -> str:
    """The metrics key of the accuracy a run measures each epoch: ``val_acc`` on the held-out
    training images when ``cfg.val_holdout`` > 0, otherwise ``test_acc``."""
    return "val_acc" if cfg.val_holdout else "test_acc"


def _numbers(data: dict, names: tuple[str, ...]) -> list[str]:
    """The ``names`` whose value in ``data`` is not a number (bools are not)."""
    return [n for n in names if not isinstance(data.get(n), (int, float)) or isinstance(data.get(n), bool)]


class _Scored:
    """What :class:`MetricsRow` and :class:`Summary` share: one of ``test_acc`` and ``val_acc``
    (:data:`SCORES`), JSON without the fields left None, and the check of what is read."""

    REQUIRED: tuple[str, ...] = ()  # fields every file has
    NUMBERS: tuple[str, ...] = ()  # fields that must be numbers where given
    test_acc: float | None
    val_acc: float | None

    @property
    def score(self) -> float | None:
        """The accuracy the run measured: ``test_acc`` or ``val_acc``."""
        return self.test_acc if self.test_acc is not None else self.val_acc

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data, where: str):
        """``cls(**data)``, or ValueError naming ``where`` and what is wrong: not an object, a field
        missing or unknown, a number that is not one, or not exactly one of ``test_acc`` and ``val_acc``."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: not a {cls.__name__} (not a JSON object)")
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        problems = [f"unknown field {k!r}" for k in data if k not in fields]
        problems += [f"no {k!r}" for k in cls.REQUIRED if k not in data]
        given = [k for k in cls.NUMBERS if data.get(k) is not None]
        problems += [f"{k!r} is not a number" for k in _numbers(data, tuple(given))]
        if sum(data.get(k) is not None for k in SCORES) != 1:
            problems.append("not exactly one of 'test_acc' and 'val_acc'")
        if problems:
            raise ValueError(f"{where}: not a {cls.__name__} ({'; '.join(problems)})")
        return cls(**data)


@dataclass
class MetricsRow(_Scored):
    """One epoch of a run: a line of ``metrics.jsonl``. Accuracies are in %; a run scores either
    the test set (``test_acc``) or a validation split (``val_acc``), never both."""

    epoch: int  # 1-based
    train_loss: float  # mean over the epoch's training images
    train_acc: float
    firing_rate: list[float]  # spikes per neuron per step, block by block, on the scored set
    epoch_seconds: float  # training time of the epoch (evaluation excluded)
    images_per_second: float | None = None  # training images per second (missing in the oldest runs)
    silent_outputs: list[int] | None = None  # classes whose output neuron never fired (None: not recorded)
    test_acc: float | None = None
    val_acc: float | None = None

    REQUIRED = ("epoch", "train_loss", "train_acc", "firing_rate", "epoch_seconds")
    NUMBERS = ("train_loss", "train_acc", "epoch_seconds", "images_per_second", *SCORES)

    @property
    def score(self) -> float:
        """The accuracy the run measured: ``test_acc`` or ``val_acc`` (a row always has one)."""
        return self.test_acc if self.test_acc is not None else self.val_acc  # type: ignore[return-value]

    @classmethod
    def from_json(cls, data, where: str) -> MetricsRow:
        """The row ``data`` holds; ValueError naming ``where`` if it is not one."""
        if isinstance(data, dict) and type(data.get("epoch")) is not int:
            raise ValueError(f"{where}: not a MetricsRow (need an integer epoch)")
        return super().from_json(data, where)


@dataclass
class Summary(_Scored):
    """``summary.json``: how a run ended. Fields after ``wall_seconds`` are missing (None) in
    runs older than them, and the score on processes other than rank 0."""

    preset: str
    epochs: int  # epochs trained
    wall_seconds: float  # training and evaluation time
    test_acc: float | None = None  # the last epoch's score (see MetricsRow)
    val_acc: float | None = None
    checkpoint_sha256: str | None = None  # of the final checkpoint, which is not committed
    machine: dict | None = None  # what it ran on (mtsnn.experiments.train.machine)
    unverified_data: list[str] | None = None  # data files that no checksum vouched for
    peak_memory_mb: float | None = None

    REQUIRED = ("preset", "epochs", "wall_seconds")
    NUMBERS = ("epochs", "wall_seconds", "peak_memory_mb", *SCORES)


def read_metrics(run_dir: str | Path) -> list[MetricsRow]:
    """The rows of ``run_dir/metrics.jsonl`` (none if it is missing); ValueError naming the
    file and line if one is not JSON or not a :class:`MetricsRow`."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not JSON ({e})") from None
        rows.append(MetricsRow.from_json(data, f"{path}, line {number}"))
    return rows


def write_metrics(run_dir: Path, rows: list[MetricsRow]) -> None:
    """The whole file, atomically: a kill leaves the old rows or the new, never a torn line."""
    atomic_write(run_dir / METRICS, ["".join(json.dumps(row.to_json()) + "\n" for row in rows).encode()])


def read_summary(run_dir: str | Path) -> Summary | None:
    """``summary.json``, or None for a run that has not ended; ValueError naming the file if it
    is not a :class:`Summary`."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    return Summary.from_json(data, str(path))


def write_summary(run_dir: Path, summary: Summary) -> None:
    atomic_write(run_dir / SUMMARY, [json.dumps(summary.to_json(), indent=2).encode()])


@dataclass
class RunRecord:
    """A run directory read whole, for reports and figures: its settings as saved, its epochs
    so far and, once it ended, its summary."""

    dir: Path
    config: dict  # as config.toml holds it (older runs lack newer settings)
    rows: list[MetricsRow]
    summary: Summary | None
    silent_outputs: list[int]  # at the end (from EVAL for runs logged before rows recorded it)

    @property
    def complete(self) -> bool:
        """Whether it trained all its epochs and ended."""
        return len(self.rows) >= self.config["epochs"] and self.summary is not None


def read_run(run_dir: str | Path) -> RunRecord | None:
    """The run in ``run_dir``, or None if it holds no settings or no finished epoch yet."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        return None
    rows = read_metrics(run_dir)
    if not rows:
        return None
    silent = rows[-1].silent_outputs
    if silent is None and (run_dir / EVAL).exists():
        silent = json.loads((run_dir / EVAL).read_text()).get("silent_outputs")
    return RunRecord(run_dir, read_config(run_dir), rows, read_summary(run_dir), silent or [])


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
        # the holder writes its pid just after taking the lock: give it a moment (CI once read it empty)
        for _ in range(20):
            handle.seek(0)
            holder = handle.read().strip()
            if holder:
                break
            time.sleep(0.05)
        holder = holder or "unknown"
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
    A new field goes here and in :meth:`from_state`'s check; ``Run.save`` fills it and
    ``Run.resume`` takes it back."""

    config: dict  # the run's settings (TrainConfig as a dict)
    epoch: int  # epochs finished
    batch: int  # batches of the next epoch finished
    acc: dict  # that epoch's running sums: loss_sum, correct, total, seconds
    wall_seconds: float  # training and evaluation time so far
    planned: bool  # whether a time-budget run has planned its epochs
    param_groups: list  # the optimizer's (learning rate, betas, ...)
    teacher_sha256: str = ""  # the sha256s of the teachers' files, joined by commas ('' none)

    def to_state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict, path: Path) -> Progress:
        """The progress a checkpoint's metadata holds; CheckpointError naming ``path`` unless it
        says where the run stopped. (``planned`` is missing from checkpoints older than time
        budgets: those runs had none, or had planned; ``teacher_sha256`` from those older than
        its record: their teachers are taken unchecked.)"""
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
            and isinstance(state.get("teacher_sha256", ""), str)
        )
        if not ok:
            raise CheckpointError(
                f"{path}: its saved progress is incomplete or malformed (need epoch, batch, "
                f"wall_seconds >= 0, the epoch's sums, the optimizer's param_groups and, if any, the "
                "teachers' sha256s as text)"
            )
        planned = state.get("planned", not state["config"].get("time_budget"))
        return cls(
            state["config"],
            state["epoch"],
            state["batch"],
            acc,
            state["wall_seconds"],
            planned,
            state["param_groups"],
            state.get("teacher_sha256", ""),
        )


def saved_config(state: dict, path: Path) -> TrainConfig:
    """The config a checkpoint's state holds; CheckpointError naming ``path`` if it is not a valid one."""
    try:
        return TrainConfig(**state["config"]).validate()
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: its saved config is not a valid mtsnn config ({type(e).__name__}: {e})"
        ) from None


def write_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress) -> None:
    """Save the run's checkpoint atomically; FloatingPointError naming the tensors, and nothing
    written, if any holds a NaN or an infinity (a good checkpoint is never replaced by one that
    cannot be resumed)."""
    tensors = state_tensors(model, optimizer)
    bad = non_finite(tensors)
    if bad:
        raise FloatingPointError(f"non-finite values (NaN or infinity) in {', '.join(bad[:5])}")
    save_checkpoint(path, tensors, progress.to_state())


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], TrainConfig, Progress]:
    """A stopped run's checkpoint: its tensors (for :func:`restore`), its config and its
    progress; CheckpointError naming ``path`` if it is missing, damaged, incomplete, or holds
    non-finite values."""
    tensors, state = load_checkpoint(path)
    cfg, progress = saved_config(state, path), Progress.from_state(state, path)
    bad = non_finite(tensors)
    if bad:
        raise CheckpointError(
            f"{path}: holds non-finite values (NaN or infinity) in {', '.join(bad[:5])}; it cannot be resumed"
        )
    return tensors, cfg, progress


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], TrainConfig]:
    """The model's state dict and the config in a checkpoint (of a finished or stopped run);
    CheckpointError naming ``path`` if it is missing or not an mtsnn checkpoint."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint (give a run directory or a .safetensors file)")
    tensors, state = load_checkpoint(path)
    return model_state(tensors), saved_config(state, path)


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
