"""What a run optimises and how it is scored: the loss of eq. (6), decoding, evaluation.

Decoding: the predicted class is the argmax of the output spikes summed over
time. Ties go to the lowest class index (``torch.argmax`` returns the first
maximum): deterministic, so a silent output layer always predicts class 0 and
scores exactly that class's share of the test set (10% here), never more by a
lucky draw.
"""

from __future__ import annotations

import contextlib
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..layers import SpikingBlock
from ..neuron import LIFParams, lif_step
from .distributed import is_main_process

EVAL_BATCH = 1000  # images per batch when scoring (no gradient, so memory allows large ones)


def logits(output: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """``[B, classes]``: the ANN twin's output as it is; an SNN's output spikes summed over time."""
    return output.float() if cfg.ann else output.float().sum(0)


def sample_losses(
    output: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    current: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of each sample, ``[B]``.

    SNN, ``loss="mse"``: eq. (6) summed over the steps, ``1/2 sum_t sum_i (y_i - s_i[t])^2``,
    with the desired count ``y`` = ``target_true`` for the label and ``target_false``
    for the others at every step. ``loss="ce"``: cross-entropy on the summed counts.
    The ANN twin always uses cross-entropy on its logits. Cross-entropy's targets put
    ``cfg.label_smoothing / classes`` on every class and the rest on the label.

    ``cfg.distill`` = ``a`` > 0 (knowledge distillation, Hinton et al. 2015), given the
    teachers' ``teacher_logits`` ``[K, B, classes]`` (``K`` teachers, one or an ensemble),
    mixes that loss with the teachers': with ``p`` the mean over the teachers of
    ``softmax(teacher / tau)``, ``q = softmax(student / tau)`` over the student's
    :func:`logits`, ``tau = cfg.distill_temperature``, the loss becomes
    ``(1 - a) loss + a tau^2 KL(p || q)``. The ``tau^2`` keeps the term's gradient on the
    scale of the label's as ``tau`` changes. Averaging probabilities, not logits, lets
    teachers whose logits differ in scale (an SNN's counts, an ANN's) count alike.

    ``cfg.output_floor`` > 0 adds, given the output layer's input ``current`` ``[T, B, classes]``
    (:class:`OutputCurrent`), ``output_floor * sum_t relu(V_th - I_y[t])`` for the true class
    ``y``. It is zero while the true class's neuron gets at least a threshold of current each
    step, and otherwise pulls that current up along a path that bypasses the surrogate. Without
    it an output neuron pushed a few f2 widths below threshold on every image gets no gradient
    from eq. (6), and its class is never predicted again (results/probes/recipe/README.md).
    The term reads the label and keeps its full weight even at ``distill=1``: the teacher's
    term reaches the output neurons through the same surrogate, so it cannot revive one either.
    """
    output = output.float()
    if cfg.ann or cfg.loss == "ce":
        losses = F.cross_entropy(logits(output, cfg), labels, reduction="none", label_smoothing=cfg.label_smoothing)
    else:
        target = torch.full_like(output[0], cfg.target_false)
        target.scatter_(1, labels[:, None], cfg.target_true)
        losses = 0.5 * ((output - target) ** 2).sum((0, 2))
    if cfg.distill:
        if teacher_logits is None:
            raise ValueError(f"distill={cfg.distill} needs the teacher's logits")
        tau = cfg.distill_temperature
        log_q = F.log_softmax(logits(output, cfg) / tau, 1)
        if teacher_logits.dim() != 3 or teacher_logits.shape[1:] != log_q.shape:
            raise ValueError(
                f"teacher_logits of shape {tuple(teacher_logits.shape)}; need [teachers, "
                f"{', '.join(map(str, log_q.shape))}] (batch, classes)"
            )
        # log of the mean of the teachers' softened probabilities (for one teacher, exactly its own)
        log_p = torch.logsumexp(F.log_softmax(teacher_logits.float() / tau, -1), 0) - math.log(len(teacher_logits))
        kl = (log_p.exp() * (log_p - log_q)).sum(1)
        losses = (1 - cfg.distill) * losses + cfg.distill * tau * tau * kl
    if cfg.output_floor and not cfg.ann:
        if current is None:
            raise ValueError(f"output_floor={cfg.output_floor} needs the output layer's current (see OutputCurrent)")
        true_current = current.float().gather(2, labels[None, :, None].expand(current.shape[0], -1, 1))[..., 0]
        losses = losses + cfg.output_floor * F.relu(cfg.v_th - true_current).sum(0)
    return losses


def loss_fn(
    output: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    current: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the batch of :func:`sample_losses`."""
    return sample_losses(output, labels, cfg, current, teacher_logits).mean()


class OutputCurrent:
    """Keeps what enters a spiking network's output layer during each forward pass, so that
    the loss can read that layer's input current ``I[t] = W s[t] + b`` with autograd.

    Example::

        with OutputCurrent(model) as output_current:
            spikes = model(images)
            loss = loss_fn(spikes, labels, cfg, output_current.current())
    """

    def __init__(self, model: nn.Module):
        self.block = model.blocks()[-1]
        self.input, self.num_steps = None, None
        self.handle = self.block.register_forward_pre_hook(self._keep, with_kwargs=True)

    def _keep(self, module, args, kwargs):
        self.input = args[0]
        self.num_steps = args[1] if len(args) > 1 else kwargs.get("num_steps")

    def current(self) -> torch.Tensor:
        """``[T, B, classes]``: the current of the last forward pass."""
        if self.input is None:
            raise RuntimeError("OutputCurrent: no forward pass has run since it was set up")
        block, x = self.block, self.input
        if self.num_steps is not None:  # direct input: the same current at every step
            return block.synapse(x, block.weight, block.bias).expand(self.num_steps, -1, -1)
        return block.synapse(x.flatten(0, 1), block.weight, block.bias).unflatten(0, x.shape[:2])

    def remove(self) -> None:
        self.handle.remove()

    def __enter__(self) -> OutputCurrent:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def needs_output_current(cfg: TrainConfig) -> bool:
    """Whether the loss (``output_floor``) or the readout of ``cfg`` reads the output layer's current."""
    return not cfg.ann and (cfg.output_floor > 0 or cfg.readout != "counts")


def predict(output: torch.Tensor, cfg: TrainConfig, current: torch.Tensor | None = None) -> torch.Tensor:
    """The predicted class of each sample, ``[B]``: the ANN twin's largest logit; the SNN's
    largest spike count summed over time, ties going to the lowest class index. With
    ``cfg.readout="residual"`` the SNN's ties go instead to the output neuron with the most
    membrane potential left after the last step, ``u[T]``, recomputed from the output
    layer's ``current`` ``[T, B, classes]`` (:class:`OutputCurrent`): the count plus
    ``sigmoid(u[T] / V_th)``, which lies in (0, 1), so it never overturns a difference in counts."""
    counts = logits(output, cfg)
    if cfg.ann or cfg.readout == "counts":
        return counts.argmax(1)
    if current is None:
        raise ValueError(f"readout={cfg.readout!r} needs the output layer's current (see OutputCurrent)")
    params = LIFParams(**cfg.neuron_kwargs())
    u = torch.zeros_like(current[0], dtype=torch.float32)
    for step in current.float():
        _, u = lif_step(step, u, params)
    return (counts + torch.sigmoid(u / cfg.v_th)).argmax(1)


class SpikeCounter:
    """Forward hooks adding up each block's spikes: firing rate = spikes per neuron per step."""

    def __init__(self, model: nn.Module):
        self.blocks = [m for m in model.modules() if isinstance(m, SpikingBlock)]
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
    """Test accuracy (%), firing rate per block and, for an SNN, the silent outputs: the
    classes whose output neuron never fired on the whole set. Such a class is never
    predicted, and the surrogate gives a neuron far below threshold no gradient to recover."""
    model.eval()
    counter = SpikeCounter(model)
    output_current = OutputCurrent(model) if needs_output_current(cfg) else None
    correct = total = 0
    output_spikes = 0
    try:
        with progress_bar(len(loader), 0, "evaluating", is_main_process()) as bar:
            for images, labels in loader.epoch(0):
                output = model(images)
                current = output_current.current() if output_current else None
                correct += (predict(output, cfg, current) == labels).sum().item()
                total += labels.numel()
                if not cfg.ann:
                    output_spikes = output_spikes + output.sum((0, 1))
                bar.update(1)
    finally:
        counter.remove()
        if output_current:
            output_current.remove()
    silent = [] if cfg.ann else (output_spikes == 0).nonzero().flatten().tolist()
    return {"acc": 100.0 * correct / total, "firing_rate": counter.firing_rates(), "silent_outputs": silent}


class _NoProgress:
    def update(self, n):
        pass

    def set_postfix(self, **values):
        pass


@contextlib.contextmanager
def progress_bar(total: int, done: int, label: str, show: bool):
    """A tqdm bar on an interactive terminal when tqdm is installed; nothing otherwise."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not show or not sys.stderr.isatty():
        yield _NoProgress()
        return
    bar = tqdm(total=total, initial=done, desc=label, leave=False, unit="batch")
    try:
        yield bar
    finally:
        bar.close()
