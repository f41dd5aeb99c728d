"""The optimizer of a run: Adam as in Table 1, the learning-rate schedule, and the epochs a
time budget holds."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig

FLUSH_EVERY = 10  # optimizer steps between flushes of subnormal optimizer state


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam with Table 1's settings (``cfg.adam_beta2`` its beta_2); AdamW (decoupled weight
    decay) when ``cfg.weight_decay`` > 0. The fused kernel (CPU and CUDA) does the whole update
    in one pass. The default one was 5.7x slower for mnist-cnn on our CPU: an SNN's weights
    that see no input spikes keep zeros in Adam's second moment, and torch.sqrt of zeros
    measured 20x slower there than of other values."""
    kind = torch.optim.AdamW if cfg.weight_decay else torch.optim.Adam
    return kind(
        model.parameters(),
        lr=cfg.lr,
        betas=(0.9, cfg.adam_beta2),
        eps=1e-8,
        weight_decay=cfg.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )


@torch.no_grad()
def climb(params: list[nn.Parameter], rho: float) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Sharpness-aware minimisation's ascent (Foret et al. 2021, eq. 2): move the weights
    that have a gradient ``g`` to ``w + rho g / ||g||``, ``||g||`` the L2 norm over all of them
    together, and return each with its value before, for :func:`descend`. A step of SAM is then:
    the gradient at ``w``, ``climb``, the gradient at the moved weights, ``descend``, the
    optimizer's step with that second gradient.

    The radius is in the weights' own units. For mnist-cnn (eq. 17 init, V_th = 10) the trained
    weights' norm is 768; moved by rho = 1 up the gradient, the eq. (6) loss of 2,048 training
    images rose from 0.077 to 0.137, by rho = 2 to 0.248, by rho = 0.05 to 0.078."""
    moved = [(p, p.detach().clone()) for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p, _ in moved]))
    scale = torch.where(norm > 0, rho / norm, torch.zeros_like(norm))  # a zero gradient moves nothing
    for p, _ in moved:
        p.add_(p.grad * scale)
    return moved


@torch.no_grad()
def descend(moved: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    """Put the weights that :func:`climb` moved back to their values before, exactly."""
    for p, value in moved:
        p.copy_(value)


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The rate of optimizer step ``step`` (0-based, counted over the whole run).

    A linear warm-up over the first ``warmup_epochs`` (step ``k`` of ``W`` gets ``lr (k+1)/W``),
    then ``lr`` for ``schedule="constant"`` (the paper), or for ``"cosine"``
    ``lr (1 + cos(pi p)) / 2`` with ``p`` the fraction of the post-warm-up steps done, which
    reaches 0 at the last step of the last epoch. A pure function of the step, so a resumed run
    takes the rates of an uninterrupted one (unless it is given more ``epochs``: the cosine
    then stretches to the new end)."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    total = cfg.epochs * steps_per_epoch
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def plan_epochs(
    budget: float, spent: float, steps_done: int, steps_per_second: float, steps_per_epoch: int, least: int, most: int
) -> int:
    """Epochs of a run with ``budget`` seconds of training, ``spent`` of them gone on
    ``steps_done`` steps, at a measured ``steps_per_second``: the whole epochs that the budget
    holds, between ``least`` (at least the epoch under way) and ``most``."""
    total = steps_done + max(budget - spent, 0.0) * steps_per_second
    return max(least, min(most, int(total // steps_per_epoch)))


def flush_subnormal_state(optimizer: torch.optim.Optimizer) -> None:
    """Set optimizer state below the dtype's smallest normal number to exactly 0.

    A weight that stops getting gradient (a dead ReLU, a neuron that never fires) has its
    Adam first moment decay by beta1 per step, through about 150 steps of subnormal values.
    Subnormals make CPU arithmetic many times slower, and ``torch.set_flush_denormal``
    covers only the calling thread. Measured on a fmnist-cnn ANN twin after 93 epochs
    (1.4M subnormals in one layer's state): 0.110 s per step as saved, 0.076 s flushed.
    Such values change an update by less than 1e-30, far below float32's resolution.
    """
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0:
                value.masked_fill_(value.abs() < torch.finfo(value.dtype).tiny, 0.0)
