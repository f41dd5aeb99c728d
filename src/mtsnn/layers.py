"""Weight layer + multi-threshold LIF neuron blocks: ``SpikingLinear`` and ``SpikingConv2d``.

A block takes spikes ``[T, B, ...]`` (or, for the first layer under direct
input, one image batch ``[B, ...]`` and ``num_steps``: the weight layer then runs
once, not ``T`` times) and returns spike counts ``[T, B, ...]``.

Why blocks: in ``grad_mode="paper"`` (eqs. 7-13) the weight gradient and the
error sent to the layer below use different cotangents of the same current:
``grad_W = sum_t a[t] (x) x[t]`` but ``grad_x[t] = W^T delta[t]``
(:func:`mtsnn.neuron.paper_backward`). Autograd gives a node one cotangent,
so the weight layer and its neuron compute their backward together in
:class:`_PaperBlockFunction`. The BPTT modes are plain autograd: weight layer,
then :class:`~mtsnn.neuron.MultiThresholdLIF`'s function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .neuron import LIFParams, Rows, _LIFFunction, fused, lif_forward, paper_backward

INITS = ("kaiming", "paper")
INIT = "paper"  # eq. (17): it trained best (README)
BLOCK_GRAD_MODE = "paper"  # a block's default: the paper's eqs. (7)-(13), which need the weight layer


class _PaperBlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, synapse: Synapse, p: LIFParams, num_steps):
        static = num_steps is not None
        current = synapse(x if static else x.flatten(0, 1), weight, bias)
        if not static:
            current = current.unflatten(0, x.shape[:2])
        rows = Rows(current, num_steps)
        flat = rows.current(current)
        ctx.save_for_backward(x, weight, flat)
        ctx.synapse, ctx.p, ctx.num_steps, ctx.has_bias, ctx.rows = synapse, p, num_steps, bias is not None, rows
        return rows.spikes(fused(lif_forward)(flat, p, num_steps))

    @staticmethod
    def backward(ctx, grad_spikes):
        x, weight, flat = ctx.saved_tensors
        rows = ctx.rows
        # Direct input: x[t] is the same image at every step, so paper_backward sums over t.
        delta, a = (
            rows.like_current(g)
            for g in fused(paper_backward)(rows.time_major(grad_spikes), flat, ctx.p, ctx.num_steps)
        )
        static = ctx.num_steps is not None
        if not static:
            delta, a = delta.flatten(0, 1), a.flatten(0, 1)
        x_flat = x if static else x.flatten(0, 1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = ctx.synapse.input_grad(delta, weight, x_flat.shape).reshape(x.shape)
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            grad_w, grad_b = ctx.synapse.weight_and_bias_grad(a, x_flat, weight, ctx.has_bias)
        return grad_x, grad_w, grad_b, None, None, None


class Synapse:
    """How a block's weights turn a batch of inputs into current (eq. 3), with the two
    gradients of that map that ``grad_mode="paper"`` needs (eqs. 9-10). A synapse is a value
    (its layer's hyperparameters, no weights), so the autograd function holds it, not the block.
    """

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The input current of a batch ``x`` (samples first)."""
        raise NotImplementedError

    def input_grad(self, grad: torch.Tensor, weight: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        """``dL/dx`` from ``grad = dL/dcurrent``: the error sent to the layer below (eq. 10)."""
        raise NotImplementedError

    def weight_and_bias_grad(
        self, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(dL/dweight, dL/dbias or None)`` from the cotangent ``grad`` of the current."""
        raise NotImplementedError


@dataclass(frozen=True)
class LinearSynapse(Synapse):
    """``F.linear``: ``x [B, in] -> [B, out]``."""

    def __call__(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def input_grad(self, grad, weight, x_shape):
        return grad @ weight

    def weight_and_bias_grad(self, grad, x, weight, has_bias):
        grad = grad.reshape(-1, grad.shape[-1])
        return grad.T @ x.reshape(-1, x.shape[-1]), grad.sum(0) if has_bias else None


@dataclass(frozen=True)
class ConvSynapse(Synapse):
    """``F.conv2d`` with stride 1 and ``padding`` on each side: ``x [B, C, H, W] -> [B, C', H', W']``."""

    padding: int

    def __call__(self, x, weight, bias):
        return F.conv2d(x, weight, bias, padding=self.padding)

    def input_grad(self, grad, weight, x_shape):
        return torch.nn.grad.conv2d_input(x_shape, weight, grad, padding=self.padding)

    def weight_and_bias_grad(self, grad, x, weight, has_bias):
        # One oneDNN/cuDNN call for both: a separate sum over (N, H, W) of a channels-last
        # gradient takes longer than the weight gradient itself on a CPU.
        _, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            bias_sizes=[weight.shape[0]] if has_bias else None,
            stride=[1, 1],
            padding=[self.padding, self.padding],
            dilation=[1, 1],
            transposed=False,
            output_padding=[0, 0],
            groups=1,
            output_mask=[False, True, has_bias],  # no input gradient here: input_grad gives it
        )
        return grad_w, grad_b


class SpikingBlock(nn.Module):
    """A weight layer and its multi-threshold LIF neurons: what every block shares.

    A subclass sets its :class:`Synapse` (``self.synapse``, used as
    ``block.synapse(x, block.weight, block.bias)``) and names its input's per-sample dims in
    ``INPUT`` (the first one, an attribute of the block, is checked).
    ``isinstance(m, SpikingBlock)`` is how the rest of mtsnn finds blocks in a network.
    """

    INPUT: tuple[str, ...] = ()
    synapse: Synapse

    def __init__(self, weight_shape, fan_in: int, bias: bool, neuron: dict):
        super().__init__()
        self.params = LIFParams(**{"grad_mode": BLOCK_GRAD_MODE, **neuron})
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.empty(weight_shape[0])) if bias else None
        self.fan_in = fan_in
        self.reset_parameters()

    def reset_parameters(self, init: str = INIT) -> None:
        """``"paper"``: eq. (17), N(V_th / fan_in, 0.5^2), reading its second number as the
        standard deviation. ``"kaiming"``: N(0, 2 V_th^2 / fan_in), He init scaled to the
        threshold. Biases start at 0."""
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        v_th = self.params.v_th
        with torch.no_grad():
            if init == "kaiming":
                self.weight.normal_(0.0, v_th * math.sqrt(2.0 / self.fan_in))
            else:
                self.weight.normal_(v_th / self.fan_in, 0.5)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
        """``x``: spikes ``[T, B, ...]``, or one input ``[B, ...]`` held for ``num_steps`` steps."""
        if num_steps is not None and num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self._check_input(x, num_steps)
        if self.params.grad_mode == "paper":
            return _PaperBlockFunction.apply(x, self.weight, self.bias, self.synapse, self.params, num_steps)
        if num_steps is not None:
            current = self.synapse(x, self.weight, self.bias)
        else:
            current = self.synapse(x.flatten(0, 1), self.weight, self.bias).unflatten(0, x.shape[:2])
        return _LIFFunction.apply(current, self.params, num_steps)

    def _check_input(self, x: torch.Tensor, num_steps: int | None) -> None:
        """ValueError naming the shape unless ``x`` is ``[T, B, SAMPLE]``, or ``[B, SAMPLE]``
        with ``num_steps``."""
        lead = "B" if num_steps is not None else "T, B"
        leading = 1 if num_steps is not None else 2
        size = getattr(self, self.INPUT[0])
        if x.dim() != leading + len(self.INPUT) or x.shape[leading] != size:
            raise ValueError(
                f"{type(self).__name__}: input must be shaped [{lead}, {', '.join(self.INPUT)}] with "
                f"{self.INPUT[0]}={size}, got {tuple(x.shape)}"
            )


class SpikingLinear(SpikingBlock):
    """``nn.Linear`` followed by a multi-threshold LIF neuron; ``**neuron`` as in
    MultiThresholdLIF, but ``grad_mode`` defaults to :data:`BLOCK_GRAD_MODE` and may also be
    ``"paper"`` (eqs. 7-13), which needs the weight layer a block has.

    Input: spikes ``[T, B, in_features]``, or one input ``[B, in_features]`` with
    ``num_steps``. Output: spike counts ``[T, B, out_features]``.

    >>> block = SpikingLinear(784, 100)
    >>> block(torch.rand(2, 8, 784)).shape
    torch.Size([2, 8, 100])
    >>> block(torch.rand(8, 784), num_steps=4).shape     # direct input: the layer runs once
    torch.Size([4, 8, 100])
    """

    INPUT = ("in_features",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **neuron):
        self.in_features, self.out_features = in_features, out_features
        self.synapse = LinearSynapse()
        super().__init__((out_features, in_features), in_features, bias, neuron)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, {self.params}"


class SpikingConv2d(SpikingBlock):
    """``nn.Conv2d`` ('same' padding, odd kernel) followed by a multi-threshold LIF neuron;
    ``**neuron`` as in :class:`SpikingLinear`.

    Input: spikes ``[T, B, in_channels, H, W]``, or images ``[B, in_channels, H, W]`` with
    ``num_steps``. Output: spike counts ``[T, B, out_channels, H, W]``.

    >>> block = SpikingConv2d(1, 15, 5)
    >>> block(torch.rand(8, 1, 28, 28), num_steps=2).shape
    torch.Size([2, 8, 15, 28, 28])
    """

    INPUT = ("in_channels", "H", "W")
    synapse: ConvSynapse

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True, **neuron):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1 for 'same' padding, got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.synapse = ConvSynapse(kernel_size // 2)
        super().__init__(
            (out_channels, in_channels, kernel_size, kernel_size), in_channels * kernel_size * kernel_size, bias, neuron
        )

    @property
    def padding(self) -> int:
        """The 'same' padding on each side, as the synapse applies it."""
        return self.synapse.padding

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"bias={self.bias is not None}, {self.params}"
        )
