"""Training and evaluation: the loss of eq. (6), decoding, and a resumable run.

Decoding: the predicted class is the argmax of the output spikes summed over
time. Ties go to the lowest class index (``torch.argmax`` returns the first
maximum), so a silent output layer always predicts class 0: deterministic, and
never counted as correct by luck of the draw.

A run directory holds ``config.toml``, ``metrics.jsonl`` (one JSON object per
epoch), ``checkpoint.safetensors`` (written atomically after every epoch and on
SIGINT/SIGTERM, with the position inside the epoch) and, at the end,
``summary.json``. Resuming replays nothing: the data order and augmentation of
batch ``i`` of epoch ``e`` are a pure function of ``(seed, e, i)``, so a resumed
run sees the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import data as datasets
from .checkpoint import atomic_write, load_checkpoint, save_checkpoint
from .config import TrainConfig, dump_toml
from .layers import SpikingConv2d, SpikingLinear
from .models import from_spec

CHECKPOINT = "checkpoint.safetensors"


def build_model(cfg: TrainConfig) -> nn.Module:
    if cfg.ann:
        return from_spec(cfg.spec, cfg.input_shape, 10, ann=True, pooling=cfg.pooling)
    return from_spec(cfg.spec, cfg.input_shape, 10, pooling=cfg.pooling, init=cfg.init, num_steps=cfg.T,
                     **cfg.neuron_kwargs())


def loss_fn(output: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Mean over the batch of the per-sample loss.

    SNN, ``loss="mse"``: eq. (6) summed over the steps, ``1/2 sum_t sum_i (y_i - s_i[t])^2``,
    with the desired count ``y`` = ``target_true`` for the label and ``target_false``
    for the others at every step. ``loss="ce"``: cross-entropy on the summed counts.
    The ANN twin always uses cross-entropy on its logits.
    """
    if cfg.ann or cfg.loss == "ce":
        return F.cross_entropy(output if cfg.ann else output.sum(0), labels)
    target = torch.full_like(output[0], cfg.target_false)
    target.scatter_(1, labels[:, None], cfg.target_true)
    return 0.5 * ((output - target) ** 2).sum((0, 2)).mean()


def predict(output: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return (output if cfg.ann else output.sum(0)).argmax(1)


class SpikeCounter:
    """Forward hooks adding up each block's spikes: firing rate = spikes per neuron per step."""

    def __init__(self, model: nn.Module):
        self.blocks = [m for m in model.modules() if isinstance(m, (SpikingLinear, SpikingConv2d))]
        self.spikes = [0.0] * len(self.blocks)
        self.slots = [0] * len(self.blocks)  # neuron-steps seen
        self.handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(self.blocks)]

    def _hook(self, index):
        def hook(module, inputs, output):
            self.spikes[index] += output.detach().sum().item()
            self.slots[index] += output.numel()
        return hook

    def firing_rates(self) -> list[float]:
        return [s / n if n else 0.0 for s, n in zip(self.spikes, self.slots)]

    def remove(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def evaluate(model: nn.Module, loader, cfg: TrainConfig) -> dict:
    """Test accuracy (%) and firing rate per block."""
    model.eval()
    counter = SpikeCounter(model)
    correct = total = 0
    try:
        for images, labels in loader.epoch(0):
            correct += (predict(model(images), cfg) == labels).sum().item()
            total += labels.numel()
    finally:
        counter.remove()
    return {"acc": 100.0 * correct / total, "firing_rate": counter.firing_rates()}


class StopRequested:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next batch boundary and stops."""

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


class Interrupted(Exception):
    def __init__(self, signum: int, checkpoint: Path):
        super().__init__(f"stopped by signal {signum}; checkpoint saved to {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


def _state_tensors(model, optimizer) -> dict[str, torch.Tensor]:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim/{index}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng/torch"] = torch.get_rng_state()
    return tensors


def _restore(model, optimizer, tensors, state) -> None:
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    optim_state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            optim_state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": optim_state, "param_groups": state["param_groups"]})
    torch.set_rng_state(tensors["rng/torch"])


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


class Run:
    """One training run in ``run_dir``: fresh, or resumed from its checkpoint."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, log=print):
        self.cfg, self.run_dir, self.log = cfg.validate(), Path(run_dir), log
        self.device = torch.device(cfg.device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        root = cfg.data_root or None
        train_set = datasets.load(cfg.dataset, "train", root=root)
        if cfg.train_limit:
            train_set = train_set.subset(cfg.train_limit)
        self.train_size = len(train_set.labels)
        self.train_loader = datasets.DeviceLoader(train_set, cfg.batch_size, train=True, device=self.device,
                                                  seed=cfg.seed, crop_padding=cfg.crop_padding, flip=cfg.flip)
        self.test_loader = datasets.DeviceLoader(datasets.load(cfg.dataset, "test", root=root), 1000,
                                                 train=False, device=self.device)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
        self.epoch, self.batch, self.acc = 0, 0, {"loss_sum": 0.0, "correct": 0, "total": 0, "seconds": 0.0}
        self.wall_seconds = 0.0

    @classmethod
    def start(cls, cfg: TrainConfig, run_dir: str | Path, log=print) -> "Run":
        """A fresh run; refuses a directory that already holds a checkpoint (resume it instead)."""
        if (Path(run_dir) / CHECKPOINT).exists():
            raise ValueError(f"{run_dir} already holds a run's checkpoint; continue it with --resume {run_dir} "
                             "or choose another --run-dir")
        return cls(cfg, run_dir, log)

    @classmethod
    def resume(cls, run_dir: str | Path, log=print, **overrides) -> "Run":
        """Reopen ``run_dir``: its config (``overrides`` may change e.g. ``epochs`` or ``device``)."""
        path = Path(run_dir) / CHECKPOINT
        tensors, state = load_checkpoint(path)
        cfg = TrainConfig(**state["config"]).replace(**overrides)
        run = cls(cfg, run_dir, log)
        _restore(run.model, run.optimizer, tensors, state)
        run.epoch, run.batch, run.acc, run.wall_seconds = state["epoch"], state["batch"], state["acc"], state["wall_seconds"]
        log(f"resumed {run_dir} at epoch {run.epoch + 1}, batch {run.batch}")
        return run

    def save(self) -> Path:
        path = self.run_dir / CHECKPOINT
        state = {"config": dataclasses.asdict(self.cfg), "epoch": self.epoch, "batch": self.batch,
                 "acc": self.acc, "wall_seconds": self.wall_seconds,
                 "param_groups": self.optimizer.state_dict()["param_groups"]}
        save_checkpoint(path, _state_tensors(self.model, self.optimizer), state)
        return path

    def _keep_metrics_up_to(self, epoch: int) -> None:
        """Drop rows of epochs after ``epoch`` (written before a kill, redone after the resume)."""
        rows = [json.dumps(row) + "\n" for row in read_metrics(self.run_dir) if row["epoch"] <= epoch]
        atomic_write(self.run_dir / "metrics.jsonl", ["".join(rows).encode()])

    def fit(self) -> dict:
        """Train to ``cfg.epochs``; return the summary (also written to ``summary.json``)."""
        # Denormal floats (tiny surrogate x gradient products) make CPU matmuls several times slower.
        torch.set_flush_denormal(True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._keep_metrics_up_to(self.epoch)
        atomic_write(self.run_dir / "config.toml", [dump_toml(dataclasses.asdict(self.cfg)).encode()])
        with StopRequested() as stop:
            while self.epoch < self.cfg.epochs:
                self._train_epoch(stop)
                row = self._finish_epoch()
                with open(self.run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                self.save()
        rows = read_metrics(self.run_dir)
        summary = {"preset": self.cfg.preset, "test_acc": rows[-1]["test_acc"], "epochs": self.epoch,
                   "wall_seconds": self.wall_seconds}
        atomic_write(self.run_dir / "summary.json", [json.dumps(summary, indent=2).encode()])
        return summary

    def _train_epoch(self, stop: StopRequested) -> None:
        self.model.train()
        cfg, acc = self.cfg, self.acc
        t0 = time.perf_counter()
        for images, labels in self.train_loader.epoch(self.epoch, start_batch=self.batch):
            output = self.model(images)
            loss = loss_fn(output, labels, cfg)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {self.epoch + 1}, batch {self.batch}; "
                                         f"the last good checkpoint is {self.run_dir / CHECKPOINT}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            acc["loss_sum"] += loss.item() * labels.numel()
            acc["correct"] += (predict(output.detach(), cfg) == labels).sum().item()
            acc["total"] += labels.numel()
            self.batch += 1
            if stop.signal is not None:
                self._add_time(t0)
                raise Interrupted(stop.signal, self.save())
        self._add_time(t0)

    def _add_time(self, t0: float) -> None:
        seconds = time.perf_counter() - t0
        self.acc["seconds"] += seconds
        self.wall_seconds += seconds

    def _finish_epoch(self) -> dict:
        acc = self.acc
        t0 = time.perf_counter()
        test = evaluate(self.model, self.test_loader, self.cfg)
        self.wall_seconds += time.perf_counter() - t0
        self.epoch += 1
        row = {"epoch": self.epoch, "train_loss": acc["loss_sum"] / acc["total"],
               "train_acc": 100.0 * acc["correct"] / acc["total"], "test_acc": test["acc"],
               "firing_rate": test["firing_rate"], "epoch_seconds": acc["seconds"],
               "images_per_second": self.train_size / acc["seconds"]}
        self.log(f"epoch {row['epoch']:3d}/{self.cfg.epochs}  loss {row['train_loss']:.4f}  "
                 f"train {row['train_acc']:.2f}%  test {row['test_acc']:.2f}%  "
                 f"{row['epoch_seconds']:.1f}s  {row['images_per_second']:.0f} img/s")
        self.batch, self.acc = 0, {"loss_sum": 0.0, "correct": 0, "total": 0, "seconds": 0.0}
        return row
