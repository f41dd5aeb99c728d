"""A resumable training run: set-up (:func:`place`, :func:`load_data`,
:func:`build_training`), the loop (:class:`Run`) and :func:`finish`, which trains only what a
run directory is missing. The loss and the scoring are in :mod:`.objective`, the optimizer and
its schedule in :mod:`.optimizer`.

A run directory holds ``config.toml``, ``metrics.jsonl`` (one JSON object per
epoch), ``checkpoint.safetensors`` (written atomically after every epoch and on
SIGINT/SIGTERM, with the position inside the epoch) and, at the end,
``summary.json``. Resuming replays nothing: the data order and augmentation of
batch ``i`` of epoch ``e`` are a pure function of ``(seed, e, i)``, so a resumed
run sees the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import signal
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .. import data as datasets
from .. import zoo
from ..checkpoint import CheckpointError, file_sha256
from ..config import TrainConfig, build_model, own_network, seconds, teachers, usable_device
from ..models import calibrate, folded_parameters, kept_parameters
from ..neuron import neuron_backend
from .distributed import Processes, is_main_process
from .evaluate import load_trained
from .objective import (
    EVAL_BATCH,
    OutputCurrent,
    evaluate,
    logits,
    needs_output_current,
    predict,
    progress_bar,
    sample_losses,
)
from .optimizer import (
    FLUSH_EVERY,
    climb,
    descend,
    flush_subnormal_state,
    learning_rate,
    make_optimizer,
    plan_epochs,
)
from .rundir import (
    CHECKPOINT,
    METRICS,
    SCORE_LABELS,
    SUMMARY,
    MetricsRow,
    Progress,
    Summary,
    lock,
    read_checkpoint,
    read_config,
    read_metrics,
    read_summary,
    restore,
    score_name,
    write_checkpoint,
    write_config,
    write_metrics,
    write_summary,
)

SYNC_EVERY = 25  # steps between host syncs on a GPU (read back sums, check the loss is finite)
CALIBRATE_IMAGES = 128  # training images that --calibrate scales the initial weights on
PROBE_STEPS = 20  # steps timed (after 2 left out for warming caches and compiling) to plan a time budget


class StopRequested:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next batch boundary and stops.
    With several processes, they agree on the batch at which to stop."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class StorageError(Exception):
    """Writing the run directory failed (read-only, disk full, ...). The message names the
    file and says which checkpoint, if any, is intact to resume from."""


class Interrupted(Exception):
    def __init__(self, signum: int, checkpoint: Path):
        super().__init__(f"stopped by signal {signum}; checkpoint saved to {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


def place(cfg: TrainConfig) -> tuple[torch.device, Processes]:
    """The device this process computes on (its own GPU under ``torchrun``) and the processes
    of the run; with ``cfg.deterministic``, torch set to deterministic algorithms."""
    device = usable_device(cfg.device)
    procs = Processes.from_environment(device)
    if device.type == "cuda" and procs.world > 1:
        device = torch.device("cuda", procs.local_rank)
    if cfg.deterministic:
        if device.type == "cuda":  # cuBLAS is deterministic only with a fixed workspace
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    return device, procs


@dataclasses.dataclass
class RunData:
    """What a run trains and scores on."""

    train: datasets.DeviceLoader  # augmented, reshuffled each epoch
    scored: datasets.DeviceLoader  # the test set, or the held-out validation images
    train_size: int
    unverified: list[str]  # data files that no checksum vouched for
    calibration: torch.Tensor | None  # with cfg.calibrate: the first CALIBRATE_IMAGES training images


def load_data(cfg: TrainConfig, device: torch.device, procs: Processes, log) -> RunData:
    """``cfg``'s data on ``device``: rank 0 downloads what is missing while the others wait. With
    ``cfg.val_holdout`` the scored set is held out of the training images and the test set is
    not read."""
    root = cfg.data_root or None
    if not procs.is_main:
        procs.barrier()  # wait until rank 0 has downloaded what was missing
    train_set = datasets.load(cfg.dataset, "train", root=root, download=procs.is_main)
    if cfg.val_holdout:  # settings are chosen on these; the test set is not even read
        train_set, test_set = train_set.hold_out(cfg.val_holdout)
    else:
        test_set = datasets.load(cfg.dataset, "test", root=root, download=procs.is_main)
    if procs.is_main:
        procs.barrier()
    for name, limit, dataset in (("train_limit", cfg.train_limit, train_set), ("test_limit", cfg.test_limit, test_set)):
        if limit > len(dataset):
            log(f"{name}={limit} is more than the {len(dataset)} images there are: using all of them")
    if cfg.train_limit:
        train_set = train_set.subset(cfg.train_limit)
    if cfg.test_limit:
        test_set = test_set.subset(cfg.test_limit)
    train = datasets.DeviceLoader(
        train_set,
        cfg.batch_size,
        train=True,
        device=device,
        seed=cfg.seed,
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
        cutout=cfg.cutout,
        elastic=cfg.elastic,
        rotation=cfg.rotation,
        zoom=cfg.zoom,
        mixup=cfg.mixup,
    )
    calibration = None
    if cfg.calibrate:  # the same first images on every process, so that all start alike
        first = datasets.DeviceLoader(train_set.subset(CALIBRATE_IMAGES), CALIBRATE_IMAGES, train=False, device=device)
        calibration = next(iter(first.epoch(0)))[0]
    return RunData(
        train,
        datasets.DeviceLoader(test_set, EVAL_BATCH, train=False, device=device),
        len(train_set.labels),
        [str(path) for path in dict.fromkeys(train_set.unverified + test_set.unverified)],
        calibration,
    )


def build_training(
    cfg: TrainConfig, device: torch.device, procs: Processes, calibration: torch.Tensor | None
) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module]:
    """``cfg``'s network seeded with ``cfg.seed`` (scaled to ``cfg.calibrate`` on the ``calibration``
    images when given: a fresh run whose :func:`load_data` took them), its optimizer, and what the training
    step calls: the network wrapped for DDP and compiled on request."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    if calibration is not None:
        calibrate(model, calibration, cfg.calibrate)
    optimizer = make_optimizer(model, cfg, device)
    trained = model
    if procs.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(model)
    if cfg.compile:
        trained = torch.compile(trained)
    return model, optimizer, trained


class Teacher(NamedTuple):
    """A frozen model that a distilled run learns from (:func:`load_teachers`)."""

    model: nn.Module  # in eval mode, without gradients
    config: TrainConfig
    sha256: str  # of its file (trained_file): what a resumed run checks it still learns from


def load_teachers(cfg: TrainConfig, device: torch.device, log=print) -> list[Teacher]:
    """The teachers ``cfg.teacher`` names (:func:`mtsnn.config.teachers`), in its order; none
    without one. ``log`` gets one line for each, naming it, with its file's sha256 (:func:`trained_file`).

    ValueError naming the teacher if no such run directory or file exists, if it is a run
    directory whose run has not finished (its checkpoint would be a half-trained teacher, and
    another once the run goes on), if it learned another data set, or if the run holds out
    images to score on (``val_holdout``) that the teacher may have trained on: it must have
    held out the same ones (the choice depends on the count alone). A run scored on the test
    set may take any teacher of its data set, since no run trains on test images.
    """
    return [_load_teacher(name, cfg, device, log) for name in teachers(cfg.teacher)]


def _load_teacher(name: str, cfg: TrainConfig, device: torch.device, log) -> Teacher:
    model, taught, digest = _load_trained_for(name, cfg, device, "teacher")
    model.eval().requires_grad_(False)
    kind = ("ANN" if own_network(taught.preset, taught.spec) else "ANN twin") if taught.ann else "SNN"
    log(f"teacher: {name} ({kind} {taught.spec}, file sha256 {digest})")
    return Teacher(model, taught, digest)


def start_from(model: nn.Module, cfg: TrainConfig, device: torch.device, log=print) -> None:
    """Copy into ``model`` (``cfg``'s network, on ``device``) the weights of the trained model
    ``cfg.init_from``, checked as :func:`load_teachers` checks a teacher, and of the same network.
    A block trained with ``qat`` passes on the float weight it keeps; an SNN trained with batch
    norm passes on its blocks' folded weights and biases to a run without it (to fine-tune with
    ``qat``, say)."""
    source, trained, digest = _load_trained_for(cfg.init_from, cfg, device, "init_from")
    if (trained.spec, trained.ann) != (cfg.spec, cfg.ann):
        kind = {False: "an SNN", True: "an ANN twin"}
        raise ValueError(
            f"init_from {cfg.init_from} is {kind[trained.ann]} {trained.spec}, this run {kind[cfg.ann]} "
            f"{cfg.spec}: it can only start from the same network"
        )
    folds = trained.batch_norm and not cfg.batch_norm and not cfg.ann  # an SNN's norms fold into its blocks
    if trained.batch_norm != cfg.batch_norm and not folds:
        said = {False: "without", True: "with"}
        raise ValueError(
            f"init_from {cfg.init_from} was trained {said[trained.batch_norm]} batch norm, this run "
            f"{said[cfg.batch_norm]} it: give --{'no-' * (not trained.batch_norm)}batch-norm to match it"
        )
    trained_weights = folded_parameters(source) if folds else kept_parameters(source)
    with torch.no_grad():
        for name, param in kept_parameters(model).items():
            param.copy_(trained_weights[name])
    log(f"init_from: {cfg.init_from} ({trained.spec}, file sha256 {digest})")


def _load_trained_for(
    name: str, cfg: TrainConfig, device: torch.device, role: str
) -> tuple[nn.Module, TrainConfig, str]:
    """(model, config, sha256 of its file) of the trained model ``name`` that run ``cfg`` uses as
    its ``role`` (see :func:`load_teachers` for the checks)."""
    file, digest = trained_file(name, role)
    model, trained = load_trained(file or name, str(device))
    if trained.dataset != cfg.dataset:
        raise ValueError(f"{role} {name} learned {trained.dataset}, not this run's {cfg.dataset}")
    if cfg.val_holdout and trained.val_holdout != cfg.val_holdout:
        raise ValueError(
            f"{role} {name} held out {trained.val_holdout} training images, this run {cfg.val_holdout}: "
            f"it may have learned the images this run is scored on (train the {role} with the same --val-holdout)"
        )
    return model, trained, digest


def trained_file(name: str, role: str = "teacher") -> tuple[Path | None, str]:
    """The file that holds the trained model ``name`` (None for ``pretrained:NAME``) and its
    sha256: the whole checkpoint file's for a run or checkpoint, the shipped weights' for a
    shipped model (checked as it loads). ValueError naming it, as the run's ``role``, if there
    is no such file, or if it is a run directory whose run has not finished."""
    if shipped := zoo.shipped(name):
        return None, zoo.record(shipped)["sha256"]
    path = Path(name)
    if not path.exists():
        raise ValueError(
            f"{role} {name}: no such run directory or checkpoint (a relative path is read from "
            f"the working directory, {Path.cwd()})"
        )
    if path.is_dir() and not (path / SUMMARY).exists():
        raise ValueError(f"{role} {name} has not finished its run (no {SUMMARY}): finish it first")
    file = path / CHECKPOINT if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"{role} {name}: its run finished, but its checkpoint {file} is gone (train it again)")
    return file, file_sha256(file)


# What a resumed run may change: where and how fast it runs, and how long. The rest would
# break the promise that it sees the batches and takes the steps of an uninterrupted run.
RESUMABLE_SETTINGS = ("epochs", "device", "data_root", "compile", "amp", "deterministic")


class Run:
    """One training run in ``run_dir``: fresh, or resumed from its checkpoint.

    Under ``torchrun`` each process trains on its shard of every batch (see
    :mod:`mtsnn.experiments.distributed`); rank 0 evaluates and writes the run directory.
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, log=print, fresh: bool = True):
        """``fresh=False``: the weights are about to come from a checkpoint (:meth:`resume`)."""
        cfg.validate()
        if not cfg.data_root:  # record where the data was found, so that `mtsnn eval` finds it again
            cfg = cfg.replace(data_root=str(datasets.data_root().resolve()))
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device, self.procs = place(cfg)
        self.log = log if self.procs.is_main else (lambda *args: None)
        data = load_data(cfg, self.device, self.procs, self.log)
        self.train_loader, self.test_loader, self.train_size = data.train, data.scored, data.train_size
        self.unverified_data = data.unverified
        self.score = score_name(cfg)
        self.model, self.optimizer, self.trained = build_training(
            cfg, self.device, self.procs, data.calibration if fresh else None
        )
        if fresh and cfg.init_from:
            start_from(self.model, cfg, self.device, self.log)
        self.teachers = load_teachers(cfg, self.device, self.log)
        # the output layer's current, for the loss's output_floor term and the residual readout
        self.output_current = OutputCurrent(self.model) if needs_output_current(cfg) else None
        self.epoch, self.batch = 0, 0
        self.sums = _zero_sums()  # the epoch's running sums: loss_sum, correct, total, seconds
        self.wall_seconds = 0.0
        self.saved = None  # (epoch, batch) that the checkpoint on disk holds, None before the first
        self.planned = not cfg.time_budget  # a time-budget run plans its epochs once it has measured its speed
        self.step_times: list[float] = []  # seconds of each step of this process, while it measures
        # A CPU reads the step's sums back every step (no cost); a GPU every SYNC_EVERY, so that the
        # host queues steps ahead of the device instead of waiting on each one
        self.sync_every = 1 if self.device.type == "cpu" else SYNC_EVERY
        self.lock = None  # the run directory's lock (rank 0), held until fit returns
        self.first_batch = 0  # the batch the epoch under way started from (after a resume, not 0)

    @classmethod
    def start(cls, cfg: TrainConfig, run_dir: str | Path, log=print) -> Run:
        """A fresh run; refuses a directory that already holds a run's files, whose results it
        would overwrite (resume a stopped run instead; a finished one is kept)."""
        run_dir = Path(run_dir)
        usable_device(cfg.device)  # before anything is written
        held = lock(run_dir) if is_main_process() else None
        found = [name for name in (CHECKPOINT, SUMMARY) if (run_dir / name).exists()]
        # Metrics of epoch 1 alone, without a checkpoint, are those of a run killed before its
        # first save: nothing to keep. More are results of their own.
        if any(row.epoch > 1 for row in read_metrics(run_dir)):
            found.append(METRICS)
        if found == [CHECKPOINT]:
            raise ValueError(
                f"{run_dir} holds a stopped run ({CHECKPOINT}); continue it with --resume {run_dir} "
                "or choose another --run-dir"
            )
        with _released_on_error(held):
            if found:
                raise ValueError(f"{run_dir} already holds a run ({', '.join(found)}); choose another --run-dir")
            run = cls(cfg, run_dir, log)
        run.lock = held
        return run

    @classmethod
    def resume(cls, run_dir: str | Path, log=print, **overrides) -> Run:
        """Reopen ``run_dir`` with its saved config; ``overrides`` may change the
        :data:`RESUMABLE_SETTINGS` (e.g. more ``epochs``, another ``device``) and repeat others."""
        path = Path(run_dir) / CHECKPOINT
        if not path.exists():  # refused before the lock, which would create the folder
            raise CheckpointError(f"{path}: no such checkpoint (--resume takes the directory of a stopped run)")
        held = lock(run_dir) if is_main_process() else None
        with _released_on_error(held):
            return cls._resume(path, held, log, overrides)

    @classmethod
    def _resume(cls, path: Path, held, log, overrides: dict) -> Run:
        run_dir = path.parent
        tensors, saved, progress = read_checkpoint(path)
        cfg = saved.replace(**overrides)
        # Teachers known by their sha256 may move: the check below refuses other weights
        movable = ("teacher",) if progress.teacher_sha256 else ()
        changed = [
            f"{name}={old!r} to {new!r}"
            for name, old, new in _fixed_changes(dataclasses.asdict(saved), overrides)
            if name not in movable
        ]
        if changed:
            raise ValueError(
                f"{run_dir}: a resumed run keeps its settings, but {', '.join(changed)} was asked "
                f"(only {', '.join(RESUMABLE_SETTINGS + movable)} can change). Start a new run to change them"
            )
        if cfg.epochs < progress.epoch + (progress.batch > 0):
            raise ValueError(
                f"{run_dir} has trained {progress.epoch} epochs and {progress.batch} batches; "
                f"epochs={cfg.epochs} would end it before that (a run cannot be shortened)"
            )
        run = cls(cfg, run_dir, log, fresh=False)
        run.lock = held
        if progress.teacher_sha256:
            _check_teachers(run_dir, progress.teacher_sha256, teachers(cfg.teacher), _digests(run.teachers))
        try:
            restore(run.model, run.optimizer, tensors, progress.param_groups)
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{path}: its weights or optimizer state do not fit its config ({type(e).__name__}: {str(e)[:300]})"
            ) from None
        run.epoch, run.batch, run.wall_seconds = progress.epoch, progress.batch, progress.wall_seconds
        run.saved = (run.epoch, run.batch)
        run.planned = progress.planned
        if run.procs.is_main:  # the saved sums are global: one process carries them on
            run.sums = progress.acc
        run.log(f"resumed {run_dir} at epoch {run.epoch + 1}, batch {run.batch}")
        return run

    def save(self) -> Path:
        """Checkpoint (rank 0 writes; every process must call it, to combine the epoch's sums)."""
        self._combine_sums()
        path = self.run_dir / CHECKPOINT
        if self.procs.is_main:
            progress = Progress(
                config=dataclasses.asdict(self.cfg),
                epoch=self.epoch,
                batch=self.batch,
                acc=self.sums,
                wall_seconds=self.wall_seconds,
                planned=self.planned,
                param_groups=self.optimizer.state_dict()["param_groups"],
                teacher_sha256=_digests(self.teachers),
            )
            try:
                write_checkpoint(path, self.model, self.optimizer, progress)
            except FloatingPointError as e:
                raise FloatingPointError(
                    f"{e} at epoch {self.epoch + 1}, batch {self.batch}; not saved. {self.last_checkpoint()}"
                ) from None
        self.procs.barrier()
        self.saved = (self.epoch, self.batch)
        return path

    def last_checkpoint(self) -> str:
        """Where the run can be resumed from, in words."""
        if self.saved is None:
            return f"There is no checkpoint of this run yet in {self.run_dir}"
        epoch, batch = self.saved
        where = f"the end of epoch {epoch}" if batch == 0 else f"epoch {epoch + 1}, batch {batch}"
        return f"The last checkpoint, {self.run_dir / CHECKPOINT}, holds the run at {where}"

    def _keep_metrics_up_to(self, epoch: int) -> None:
        """Drop rows of epochs after ``epoch`` (written before a kill, redone after the resume)."""
        write_metrics(self.run_dir, [row for row in read_metrics(self.run_dir) if row.epoch <= epoch])

    def fit(self) -> Summary:
        """Train to ``cfg.epochs``; return the summary (also written to ``summary.json``)."""
        try:
            return self._fit()
        except OSError as e:
            raise StorageError(
                f"cannot write {e.filename or self.run_dir}: {e.strerror or e}. {self.last_checkpoint()}"
            ) from None
        finally:
            if self.lock is not None:
                self.lock.close()
                self.lock = None

    def _fit(self) -> Summary:
        main = self.procs.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._keep_metrics_up_to(self.epoch)
            write_config(self.run_dir, self.cfg)
        board = _tensorboard(self.run_dir) if main else None
        if not self.cfg.ann:
            self.log(f"neuron backend: {neuron_backend()}")
        try:
            with StopRequested() as stop:
                while self.epoch < self.cfg.epochs:
                    self._train_epoch(stop)
                    row = self._finish_epoch()
                    if row is not None:  # rank 0
                        write_metrics(self.run_dir, read_metrics(self.run_dir) + [row])
                        if board is not None:
                            for key in ("train_loss", "train_acc", self.score, "images_per_second"):
                                board.add_scalar(key, getattr(row, key), row.epoch)
                    self.save()
        finally:
            if board is not None:
                board.close()
        summary = Summary(self.cfg.preset, self.epoch, self.wall_seconds)
        if main:
            summary = dataclasses.replace(
                summary,
                **{self.score: read_metrics(self.run_dir)[-1].score},
                checkpoint_sha256=file_sha256(self.run_dir / CHECKPOINT),
                machine=machine(self.device, self.procs.world, spiking=not self.cfg.ann),
                unverified_data=self.unverified_data,
                peak_memory_mb=peak_memory_mb(self.device),
            )
            write_summary(self.run_dir, summary)
        return summary

    def _train_epoch(self, stop: StopRequested) -> None:
        self.trained.train()
        cfg, epoch_sums, procs = self.cfg, self.sums, self.procs
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.amp else contextlib.nullcontext()
        t0 = last = time.perf_counter()
        self.first_batch = self.batch
        sync_every = self.sync_every
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        augment = self._augments()
        batches = self.train_loader.epoch(self.epoch, start_batch=self.batch, augment=augment)
        with progress_bar(len(self.train_loader), self.batch, f"epoch {self.epoch + 1}", procs.is_main) as bar:
            for images, labels in batches:
                global_batch = labels.numel()
                mix = None
                if cfg.mixup and augment:  # the whole batch, before sharding: every process mixes the same way
                    images, partner, lam = self.train_loader.mix(images, self.epoch, self.batch)
                    images, labels, partner_labels = procs.shard(images, labels, labels[partner])
                    mix = (partner_labels, lam)
                else:
                    images, labels = procs.shard(images, labels)
                teacher_logits = self._teacher_logits(images)
                losses, output, current = self._forward(images, labels, teacher_logits, autocast, mix)
                # DDP averages gradients over processes: scale so that equals the global batch mean
                scale = procs.world / global_batch
                loss = losses.sum() * scale
                with torch.no_grad():  # summed on the device; read back every sync_every steps
                    sums += torch.stack(
                        [
                            losses.sum().double(),
                            (predict(output, cfg, current) == labels).sum().double(),
                            (~torch.isfinite(loss)).double(),
                        ]
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.sam:  # the gradient again, at the weights moved up this one (SAM)
                    moved = climb(list(self.model.parameters()), cfg.sam)
                    self.optimizer.zero_grad(set_to_none=True)
                    moved_loss = self._forward(images, labels, teacher_logits, autocast, mix)[0].sum() * scale
                    moved_loss.backward()
                    descend(moved)
                    sums[2] += (~torch.isfinite(moved_loss)).double()
                if (self.batch - self.first_batch) % sync_every == 0:
                    self._read_back(sums)  # before the update: on a CPU a NaN loss never reaches the weights
                rate = learning_rate(cfg, self.epoch * len(self.train_loader) + self.batch, len(self.train_loader))
                for group in self.optimizer.param_groups:
                    group["lr"] = rate
                self.optimizer.step()
                if self.batch % FLUSH_EVERY == 0:
                    flush_subnormal_state(self.optimizer)
                epoch_sums["total"] += labels.numel()
                self.batch += 1
                if not self.planned:
                    if self.device.type == "cuda":  # time what the device did, not what was queued
                        torch.cuda.synchronize(self.device)
                    now = time.perf_counter()
                    self._probe(now - last)
                    last = now
                bar.update(1)
                bar.set_postfix(
                    loss=f"{epoch_sums['loss_sum'] / max(epoch_sums['total'], 1):.3f}",
                    acc=f"{100 * epoch_sums['correct'] / max(epoch_sums['total'], 1):.1f}%",
                    img_s=f"{epoch_sums['total'] * procs.world / (time.perf_counter() - t0):.0f}",
                )
                signum = procs.max(stop.signal or 0)  # every process stops at the same batch
                if signum:
                    self._read_back(sums)
                    self._add_time(t0)
                    raise Interrupted(signum, self.save())
        self._read_back(sums)
        self._add_time(t0)

    def _forward(self, images, labels, teacher_logits, autocast, mix=None) -> tuple[torch.Tensor, ...]:
        """A training batch through the trained model: the loss of each sample, the output and
        the output layer's current (None unless the loss reads it). ``mix`` = ``(partner_labels,
        lam)`` of a mixup batch blends the loss of each sample's two labels as its images were."""
        with autocast:
            output = self.trained(images)
            current = self.output_current.current() if self.output_current else None
        losses = sample_losses(output, labels, self.cfg, current, teacher_logits)
        if mix is not None:
            partner_labels, lam = mix
            partner_losses = sample_losses(output, partner_labels, self.cfg, current, teacher_logits)
            losses = lam * losses + (1 - lam) * partner_losses
        return losses, output, current

    @torch.no_grad()
    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor | None:
        if not self.teachers:
            return None
        return torch.stack([logits(teacher.model(images), teacher.config) for teacher in self.teachers])

    def _read_back(self, sums: torch.Tensor) -> None:
        """Add the device's running sums (loss, correct predictions, non-finite losses) to the
        epoch's accumulators and zero them: the only host sync of a training step, made every
        ``sync_every`` steps. FloatingPointError if a loss was NaN or infinite since the last."""
        loss_sum, correct, bad = sums.tolist()
        sums.zero_()
        if bad:
            raise FloatingPointError(
                f"loss became non-finite (NaN or infinity) at epoch {self.epoch + 1}, by batch "
                f"{self.batch}. {self.last_checkpoint()}"
            )
        self.sums["loss_sum"] += loss_sum
        self.sums["correct"] += int(correct)

    def _probe(self, step_seconds: float) -> None:
        """Time PROBE_STEPS steps after the first two of this process (those warm caches and
        compile); then plan the epochs that ``cfg.time_budget`` holds and fix them in the config,
        which the checkpoint saves. All processes take the same plan."""
        self.step_times.append(step_seconds)
        if len(self.step_times) < 2 + PROBE_STEPS:
            return
        rate = PROBE_STEPS / sum(self.step_times[2:])
        spe = len(self.train_loader)
        # training time only, as the budget counts it: the finished epochs' (their rows; a small
        # training set finishes some before 22 steps) and this epoch's before this process took
        # it up, as rank 0 records them; then the steps since
        before = 0.0
        if self.procs.is_main:
            before = sum(row.epoch_seconds for row in read_metrics(self.run_dir)[: self.epoch]) + self.sums["seconds"]
        spent = self.procs.sum([before])[0] + sum(self.step_times[-(self.batch - self.first_batch) :])
        # The fewest epochs a plan may hold: the epoch under way, the whole warm-up, and, when
        # the epoch under way was started augmented (decided with the most epochs), the clean
        # epochs after it; fewer would end the run inside its warm-up or make it clean too late.
        least = max(
            self.epoch + 1 + (self.cfg.clean_epochs if self._augments() else 0), math.ceil(self.cfg.warmup_epochs)
        )
        epochs = plan_epochs(
            seconds(self.cfg.time_budget), spent, self.epoch * spe + self.batch, rate, spe, least, self.cfg.epochs
        )
        epochs = self.procs.max(epochs)
        self.log(
            f"time budget {self.cfg.time_budget}: {rate:.2f} steps/s measured, {spe} steps an epoch: "
            f"{epochs} epochs (at most {self.cfg.epochs})"
        )
        # validated: a plan that broke a bound (clean epochs beyond the run) would train wrongly unseen
        self.cfg, self.planned = self.cfg.replace(epochs=epochs).validate(), True
        if self.procs.is_main:
            write_config(self.run_dir, self.cfg)

    def _augments(self) -> bool:
        """Whether the epoch under way trains on augmented (and mixed) images: all but the last
        ``cfg.clean_epochs`` do."""
        return self.epoch < self.cfg.epochs - self.cfg.clean_epochs

    def _add_time(self, t0: float) -> None:
        seconds = time.perf_counter() - t0
        self.sums["seconds"] += seconds
        self.wall_seconds += seconds

    def _combine_sums(self) -> None:
        """Sum the epoch's loss and counts over processes into rank 0's accumulators."""
        if self.procs.world == 1:
            return
        keys = ("loss_sum", "correct", "total")
        totals = self.procs.sum([float(self.sums[k]) for k in keys])
        for key, total in zip(keys, totals):
            self.sums[key] = total if self.procs.is_main else 0

    def _finish_epoch(self) -> MetricsRow | None:
        """The epoch's row (rank 0; None on the others), logged."""
        self._combine_sums()
        sums, row = self.sums, None
        t0 = time.perf_counter()
        if self.procs.is_main:
            test = evaluate(self.model, self.test_loader, self.cfg)
            row = MetricsRow(
                epoch=self.epoch + 1,
                train_loss=sums["loss_sum"] / sums["total"],
                train_acc=100.0 * sums["correct"] / sums["total"],
                firing_rate=test["firing_rate"],
                epoch_seconds=sums["seconds"],
                images_per_second=self.train_size / sums["seconds"],
                silent_outputs=test["silent_outputs"],
                **{self.score: test["acc"]},
            )
            self.log(
                f"epoch {row.epoch:3d}/{self.cfg.epochs}  loss {row.train_loss:.4f}  "
                f"train {row.train_acc:.2f}%  {SCORE_LABELS[self.score]} {row.score:.2f}%  "
                f"{row.epoch_seconds:.1f}s  {row.images_per_second:.0f} img/s"
            )
            if test["silent_outputs"]:
                self.log(f"  silent output neurons (classes never predicted): {test['silent_outputs']}")
        self.procs.barrier()
        self.wall_seconds += time.perf_counter() - t0
        self.epoch += 1
        self.batch, self.sums = 0, _zero_sums()
        return row


def finish(cfg: TrainConfig, run_dir: str | Path, log=print, **resumable) -> Summary:
    """The summary of ``cfg``'s run in ``run_dir``, training only what is missing: a finished
    run is kept, a stopped one resumed (``resumable``: changes to the RESUMABLE_SETTINGS),
    others started. A run there with other settings is refused, naming them."""
    run_dir = Path(run_dir)
    fixed = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in RESUMABLE_SETTINGS}
    summary = read_summary(run_dir)
    if summary is not None:
        saved = read_config(run_dir)
        changes = _fixed_changes(saved, fixed)
        if [name for name, *_ in changes] == ["teacher"] and _moved_teachers(run_dir, cfg):
            changes = []
        changed = [f"{name}={old!r}, not {new!r}" for name, old, new in changes]
        if changed:
            raise ValueError(f"{run_dir} holds a finished run with {', '.join(changed)}; choose another run directory")
        more = (
            f" (it has {summary.epochs} epochs; to train it on to {cfg.epochs}: mtsnn train --resume "
            f"{run_dir} --epochs {cfg.epochs})"
            if cfg.epochs > summary.epochs
            else ""
        )
        log(f"{run_dir}: finished before, kept{more}")
        return summary
    if (run_dir / CHECKPOINT).exists():
        return Run.resume(run_dir, log=log, **fixed, **resumable).fit()
    return Run.start(cfg, run_dir, log=log).fit()


@contextlib.contextmanager
def _released_on_error(held):
    """Close the run directory's lock file ``held`` (None on other ranks) if the block raises:
    a run that failed to start holds no lock."""
    try:
        yield
    except BaseException:
        if held is not None:
            held.close()
        raise


def _fixed_changes(saved: dict, asked: dict) -> list[tuple]:
    """(name, saved value, asked value) of each setting outside RESUMABLE_SETTINGS that ``asked`` changes."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # settings added since it was saved
    return [
        (name, saved.get(name, defaults.get(name)), value)
        for name, value in asked.items()
        if name not in RESUMABLE_SETTINGS and saved.get(name, defaults.get(name)) != value
    ]


def _moved_teachers(run_dir: Path, cfg: TrainConfig) -> bool:
    """Whether the finished run in ``run_dir`` learned from the teachers ``cfg`` names, moved:
    its checkpoint recorded their sha256s (ValueError naming the first that differs). False if
    it recorded none, or its checkpoint is gone: then the paths alone tell."""
    path = run_dir / CHECKPOINT
    recorded = read_checkpoint(path)[2].teacher_sha256 if path.is_file() else ""
    if not recorded:
        return False
    names = teachers(cfg.teacher)
    _check_teachers(run_dir, recorded, names, ",".join(trained_file(name)[1] for name in names))
    return True


def _check_teachers(run_dir: Path, recorded: str, names: list[str], digests: str) -> None:
    """ValueError unless the teachers ``names``, whose files have the sha256s ``digests``, are
    those ``run_dir`` recorded (``recorded``), in the same order; it names the first that differs."""
    if digests == recorded:
        return
    was, now = recorded.split(","), digests.split(",")
    if sorted(was) == sorted(now):
        raise ValueError(
            f"{run_dir} learned from the same teachers in another order ({', '.join(names)} has them "
            "in a different order): name them in the order the run started with"
        )
    if len(was) != len(now):
        raise ValueError(f"{run_dir} learned from {len(was)} teacher(s), not the {len(now)} named ({', '.join(names)})")
    i = next(i for i, (a, b) in enumerate(zip(was, now)) if a != b)
    raise ValueError(
        f"{run_dir} learned from teacher {i + 1} with file sha256 {was[i]}, but {names[i]} has {now[i]}: "
        "a resumed or kept run keeps its teachers (name where the same files are now with --teacher)"
    )


def _digests(taught: list[Teacher]) -> str:
    """The teachers' sha256s as a checkpoint records them: joined by commas, in order ('' none)."""
    return ",".join(teacher.sha256 for teacher in taught)


def machine(device: torch.device, processes: int = 1, spiking: bool = True) -> dict:
    """What the run ran on, for reports (``neuron_backend`` None for an ANN twin, which has no neuron)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = next(
            (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
            platform.processor() or platform.machine(),
        )
    return {
        "device": name,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processes": processes,
        "torch": torch.__version__,
        "neuron_backend": neuron_backend() if spiking else None,
    }


def peak_memory_mb(device: torch.device) -> float:
    """The most memory this process has held: on a GPU, what torch allocated there; on a CPU,
    the process's peak resident set (which includes the data set held in memory)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _zero_sums() -> dict:
    return {"loss_sum": 0.0, "correct": 0, "total": 0, "seconds": 0.0}


def _tensorboard(run_dir: Path):
    """A SummaryWriter in ``run_dir/tensorboard`` when TensorBoard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
