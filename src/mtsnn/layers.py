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
    def forward(ctx, x, weight, bias, gamma, beta, synapse: Synapse, p: LIFParams, num_steps, norm):
        static = num_steps is not None
        x_flat = x if static else x.flatten(0, 1)
        current = synapse(x_flat, weight, bias)
        raw = mean = invstd = None
        if norm is not None:  # batch norm of the current, [N, C, ...], with torch's own kernels,
            raw = current.float()  # in float32 as the neuron is (--amp computes the synapse in bfloat16)
            current, mean, invstd = torch.ops.aten.native_batch_norm(
                raw, gamma, beta, norm.running_mean, norm.running_var, True, norm.momentum, norm.eps
            )
            norm.num_batches_tracked += 1
        if not static:
            current = current.unflatten(0, x.shape[:2])
        rows = Rows(current, num_steps)
        flat = rows.current(current)
        ctx.save_for_backward(x, weight, gamma, flat, raw, mean, invstd)
        ctx.synapse, ctx.p, ctx.num_steps, ctx.has_bias, ctx.rows = synapse, p, num_steps, bias is not None, rows
        ctx.eps = norm.eps if norm is not None else None
        return rows.spikes(fused(lif_forward)(flat, p, num_steps))

    @staticmethod
    def backward(ctx, grad_spikes):
        x, weight, gamma, flat, raw, mean, invstd = ctx.saved_tensors
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
        grad_x = grad_w = grad_b = grad_gamma = grad_beta = None
        need_x = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2])
        if raw is not None:
            # batch norm's backward is linear in the cotangent: delta and a each go through it,
            # and gamma and beta, being weights, take a (as W does)
            def through_norm(g, mask):
                g = g.contiguous(memory_format=memory_format_of(raw))
                return torch.ops.aten.native_batch_norm_backward(
                    g, raw, gamma, None, None, mean, invstd, True, ctx.eps, mask
                )

            if need_x:
                delta = through_norm(delta, [True, False, False])[0]
            a, grad_gamma, grad_beta = through_norm(a, [need_w, True, True])
        if need_x:
            grad_x = ctx.synapse.input_grad(delta, weight, x_flat.shape).reshape(x.shape)
        if need_w:
            grad_w, grad_b = ctx.synapse.weight_and_bias_grad(a, x_flat, weight, ctx.has_bias)
        return grad_x, grad_w, grad_b, grad_gamma, grad_beta, None, None, None, None


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` if ``t`` is a channels-last image batch (not also C-contiguous),
    else ``torch.contiguous_format``."""
    channels_last = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


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
    ``block.synapse(x, *block.weight_and_bias())``), names its input's per-sample dims in
    ``INPUT`` (the first one, an attribute of the block, is checked) and its batch norm's
    class in ``NORM``. ``isinstance(m, SpikingBlock)`` is how the rest of mtsnn finds blocks
    in a network.

    ``batch_norm=True`` (not in the paper) normalises the current per channel while training,
    ``I' = gamma (I - mu_B) / sigma_B + beta`` over the batch, time and space of the step, before
    the neuron: threshold-dependent batch norm (Zheng et al., AAAI 2021) with gamma starting at
    ``V_th`` (its alpha = 1), so that the current starts with a spread of one threshold. In eval
    mode the running statistics make ``I'`` an affine map of ``I`` per channel, folded into the
    weight and bias (:meth:`weight_and_bias`): the block evaluated is a plain block.
    """

    INPUT: tuple[str, ...] = ()
    NORM: type[nn.Module] = nn.BatchNorm1d
    synapse: Synapse
    norm: nn.BatchNorm1d | nn.BatchNorm2d | None

    def __init__(self, weight_shape, fan_in: int, bias: bool, neuron: dict, batch_norm: bool = False):
        super().__init__()
        self.params = LIFParams(**{"grad_mode": BLOCK_GRAD_MODE, **neuron})
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.empty(weight_shape[0])) if bias else None
        self.norm = self.NORM(weight_shape[0]) if batch_norm else None  # type: ignore[assignment]
        self.fan_in = fan_in
        self.reset_parameters()

    def reset_parameters(self, init: str = INIT) -> None:
        """``"paper"``: eq. (17), N(V_th / fan_in, 0.5^2), reading its second number as the
        standard deviation. ``"kaiming"``: N(0, 2 V_th^2 / fan_in), He init scaled to the
        threshold. Biases start at 0; a batch norm's gamma at V_th, its beta at 0."""
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
            if self.norm is not None:
                self.norm.reset_parameters()
                self.norm.weight.fill_(v_th)

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias the block's synapse applies at inference: its own, or with its
        batch norm's running statistics folded in, ``(W s, (b - mu) s + beta)`` per output
        channel with ``s = gamma / sqrt(var + eps)``.

        >>> block = SpikingLinear(4, 3, batch_norm=True)     # gamma = V_th = 10, mean 0, var 1
        >>> weight, bias = block.weight_and_bias()
        >>> torch.allclose(weight, block.weight * 10 / (1 + 1e-5) ** 0.5), bias.tolist()
        (True, [0.0, 0.0, 0.0])
        """
        if self.norm is None:
            return self.weight, self.bias
        norm = self.norm
        mean, var = norm.running_mean, norm.running_var
        assert mean is not None and var is not None  # the norm tracks running statistics
        scale = norm.weight * torch.rsqrt(var + norm.eps)
        weight = self.weight * scale.view(-1, *[1] * (self.weight.dim() - 1))
        return weight, (-mean if self.bias is None else self.bias - mean) * scale + norm.bias

    def forward(self, x: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
        """``x``: spikes ``[T, B, ...]``, or one input ``[B, ...]`` held for ``num_steps`` steps."""
        if num_steps is not None and num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self._check_input(x, num_steps)
        norm = self.norm if self.training else None  # in eval mode it is folded into the weights
        weight, bias = (self.weight, self.bias) if norm is not None else self.weight_and_bias()
        if self.params.grad_mode == "paper":
            gamma, beta = (norm.weight, norm.bias) if norm is not None else (None, None)
            return _PaperBlockFunction.apply(x, weight, bias, gamma, beta, self.synapse, self.params, num_steps, norm)
        current = self.synapse(x if num_steps is not None else x.flatten(0, 1), weight, bias)
        if norm is not None:
            current = norm(current)
        if num_steps is None:
            current = current.unflatten(0, x.shape[:2])
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

    def __init__(self, in_features: int, out_features: int, bias: bool = True, batch_norm: bool = False, **neuron):
        self.in_features, self.out_features = in_features, out_features
        self.synapse = LinearSynapse()
        super().__init__((out_features, in_features), in_features, bias, neuron, batch_norm)

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
    NORM = nn.BatchNorm2d
    synapse: ConvSynapse

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        batch_norm: bool = False,
        **neuron,
    ):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1 for 'same' padding, got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.synapse = ConvSynapse(kernel_size // 2)
        super().__init__(
            (out_channels, in_channels, kernel_size, kernel_size),
            in_channels * kernel_size * kernel_size,
            bias,
            neuron,
            batch_norm,
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
