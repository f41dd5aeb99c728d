r"""Integer-only inference: int8 weights, integer accumulators, integer potentials and thresholds.

A trained :class:`~mtsnn.models.SpikingNetwork` becomes an :class:`IntegerNetwork` that
takes raw ``uint8`` pixels and computes every step with integers alone, as a
multi-threshold neuron on integer hardware would.

Per weight block, with output channel ``c`` and ``f`` what the block's input is multiplied
by in the float network (``1/(255 std)`` per input channel for the first block, which reads
pixels ``p`` instead of ``(p/255 - mean)/std``; ``1/k^2`` for each ``k x k`` average pooling
before it, which becomes an integer *sum* pooling):

.. math::

    s_c = \max_j |W_{cj} f_j| / 127, \quad
    \hat W_{cj} = \mathrm{round}(W_{cj} f_j / s_c) \in [-127, 127], \quad
    \hat b_c = \mathrm{round}(b_c / s_c), \quad \Theta_c = \mathrm{round}(V_{th} / s_c)

so the scale is folded into the threshold: the potential is kept in units of ``s_c``. Each step

.. math::

    a = \hat W x \ \text{(int32)}, \quad
    P \leftarrow \lfloor (P\,m + 2^{15}) / 2^{16} \rfloor + a + \hat b, \quad
    s = \mathrm{clip}(\lfloor P / \Theta_c \rfloor, 0, S_{max}), \quad P \leftarrow P - s\,\Theta_c

with ``m = round((1 - 1/tau_m) 2^16)`` (the leak as a 16-bit fixed-point multiply, rounded
half up; for ``tau_m = 10``, ``m = 58982``, 0.89999 instead of 0.9), and no multiply at all
for ``tau_m = inf``. The first block's input mean is a constant input: with 'same' zero
padding (zeros of the *normalised* image) it differs at the borders, so its bias is a map
``\hat b_{c,h,w}`` over positions. Potentials are int64 tensors; accumulators are computed
exactly in float64 (integer values below 2^53; torch has no integer convolution on CPUs)
and checked to fit int32.

Rounding the weights shifts each channel's potential on average, not only at random: with
``E_{cj} = W_{cj} f_j / s_c - \hat W_{cj}``, the integer potential misses ``E \bar x`` per step
for mean input ``\bar x``. Given ``calibration`` images, each block's bias takes that shift
back (empirical bias correction, Nagel et al. 2019, "Data-free quantization through weight
equalization and bias correction", sec. 4.2), block after block, ``\bar x`` being the mean
input the *integer* network gives the block over those images and all steps:

.. math::

    \hat b_c = \mathrm{round}(b_c / s_c + (E \bar x)_c)

(averaged over positions for a later conv block, whose bias is one number per channel).
Measured on the 150-epoch fmnist-mlp (first block: mean shift 600 units against a threshold
of 30,400; output block: 27 against 223), calibrating on 1,000 training images raised the
share of training images 30,000-59,999 on which integer and float predict the same class
from 99.53% to 99.73%; 5,000 images gave no more (``results/int8/calibration.txt``).

The correction takes back the mean shift, not each image's. Quantization-aware training
removes the weights' share altogether: :func:`round_weights` (``mtsnn train --qat``, usually
with ``--init-from`` a trained model) makes the float network compute with
:math:`s_c \hat W_{cj} / f_j`, so that its integer twin rounds nothing more from its weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .layers import SpikingBlock, SpikingConv2d
from .models import FlattenFeatures, SpikingNetwork, TimeDropout, TimePool2d

LEAK_BITS = 16  # fractional bits of the leak multiplier
WEIGHT_MAX = 127  # int8, symmetric
CHUNK = 1000  # calibration images per pass when correcting biases: bounds the memory it takes


@dataclass
class IntegerBlock:
    """One weight block in integers (see the module docstring for each field)."""

    weight: torch.Tensor  # int8 [out, in] or [out, in, k, k]
    bias: torch.Tensor  # int64 [out], or [out, H, W] for a first conv block
    theta: torch.Tensor  # int64 [out]: V_th in units of the channel's weight scale
    leak: int | None  # m of the fixed-point leak, None for no leak (tau_m = inf)
    s_max: int
    padding: int | None  # conv: 'same' padding; linear: None
    scale: torch.Tensor  # float64 [out]: s_c, for inspection (the integer path does not use it)

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """int64 ``W x`` of integer ``x``, computed exactly (see the module docstring)."""
        w, x = self.weight.double(), x.double()
        acc = F.linear(x, w) if self.padding is None else F.conv2d(x, w, padding=self.padding)
        peak = int(acc.abs().max())
        if peak >= 2**31:
            raise ValueError(
                f"a {tuple(self.weight.shape)} block's accumulator reached {peak}, beyond int32 (2**31 - 1): "
                "too many inputs of too large a count for integer-only inference"
            )
        return acc.long()

    def neuron(self, acc: torch.Tensor, potential: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(spike counts, potential after the reset) of one step, in integers."""
        shape = (-1,) + (1,) * (acc.dim() - 2)
        theta = self.theta.view(shape)
        bias = self.bias if self.bias.dim() > 1 else self.bias.view(shape)
        if self.leak is not None:
            potential = (potential * self.leak + (1 << (LEAK_BITS - 1))) >> LEAK_BITS
        potential = potential + acc + bias
        spikes = torch.div(potential, theta, rounding_mode="floor").clamp_(0, self.s_max)
        return spikes, potential - spikes * theta


@dataclass(frozen=True)
class IntegerPool:
    """Pooling of integer spike counts: a sum (``mode="avg"``, its ``1/size^2`` folded into the
    next weights) or a max."""

    size: int
    mode: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg":
            return F.avg_pool2d(x.double(), self.size, divisor_override=1).long()
        return F.max_pool2d(x.double(), self.size).long()


class IntegerFlatten:
    """``[B, C, H, W]`` to ``[B, C * H * W]``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _scale(weight: torch.Tensor) -> torch.Tensor:
    """``s_c`` of the module docstring, shaped to divide ``weight``: its largest ``|w|`` per
    output channel over 127."""
    dims = tuple(range(1, weight.dim()))
    return (weight.abs().amax(dims).clamp_min(1e-30) / WEIGHT_MAX).view((-1,) + (1,) * len(dims))


def _steps(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``weight`` rounded to whole steps of its channel's scale, in [-127, 127], as floats;
    that scale, shaped to multiply them)."""
    scale = _scale(weight)
    return torch.round(weight / scale).clamp_(-WEIGHT_MAX, WEIGHT_MAX), scale


def _quantize(weight: torch.Tensor, v_th: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 weight, per-output-channel scale, int64 threshold) of a float64 ``weight``."""
    steps, scale = _steps(weight)
    return steps.to(torch.int8), scale.flatten(), torch.round(v_th / scale.flatten()).long()


def _over_inputs(per_channel: torch.Tensor, block: SpikingBlock) -> torch.Tensor:
    """A value per input channel spread over ``block``'s inputs: a convolution's are the
    channels; a linear block's are the flattened ``[C, H, W]``, channel after channel."""
    if isinstance(block, SpikingConv2d):
        return per_channel
    return per_channel.repeat_interleave(block.weight.shape[1] // len(per_channel))


class RoundedWeight(nn.Module):
    r"""Quantization-aware training: a parametrization (``torch.nn.utils.parametrize``) that
    hands a block, in float, the int8 weight :class:`IntegerNetwork` will make of it,
    :math:`s_c \hat W_{cj} / f_j`, and passes the gradient straight through to the float
    weight it keeps (Bengio et al. 2013's straight-through estimator; Jacob et al. 2018 train
    integer networks this way). Trained through it, the float network and its integer twin
    differ only by the rounding of biases, thresholds and the leak.

    ``input_factor`` ``[in]``: ``f_j`` of the module docstring, where it varies over the inputs
    (a first block reading channels of different ``std``); None where it is one number, which
    cancels out of the rounding.

    Example::

        >>> w = torch.tensor([[254.0, -127.0, 40.4]])     # s = 254 / 127 = 2
        >>> RoundedWeight()(w).tolist()                    # 2 round(-63.5), 2 round(20.2): ties to even
        [[254.0, -128.0, 40.0]]
    """

    input_factor: torch.Tensor | None

    def __init__(self, input_factor: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("input_factor", input_factor, persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        f = 1.0 if self.input_factor is None else self.input_factor.view((1, -1) + (1,) * (weight.dim() - 2))
        steps, scale = _steps(weight.detach() * f)
        rounded = steps * scale / f
        return rounded + (weight - weight.detach())  # the value of rounded, exactly; the gradient of weight


def round_weights(net: SpikingNetwork, std: tuple[float, ...] = (1.0,)) -> SpikingNetwork:
    """``net`` with every block's weight read through :class:`RoundedWeight`, in place (its
    state dict then keeps each float weight as ``...parametrizations.weight.original``).
    ``std``: the per-channel normalisation of the input (``mtsnn.data.NORMALISATION``), folded
    into the first block's integer weights."""
    for index, block in enumerate(net.blocks()):
        factor = None
        if index == 0 and len(set(std)) > 1:
            factor = _over_inputs(1.0 / torch.tensor(std, dtype=block.weight.dtype), block)
        parametrize.register_parametrization(block, "weight", RoundedWeight(factor))
    return net


class IntegerNetwork:
    """The integer-only version of a trained SNN. ``net(pixels, num_steps)``: ``uint8`` images
    ``[B, C, H, W]`` (raw pixels) to spike counts ``[T, B, classes]`` (int64).

    ``mean``/``std``: the normalisation the float network was trained with, folded into the
    first block. ``calibration``: ``uint8`` training images ``[N, C, H, W]`` for the bias
    correction of the module docstring (``None``: no correction).

    Example::

        net = mtsnn.pretrained("mnist-mlp")
        integer = IntegerNetwork(net, mean=(0.1307,), std=(0.3081,), calibration=train_images_uint8[:1000])
        counts = integer(test_images_uint8)          # predictions: counts.sum(0).argmax(1)
    """

    def __init__(
        self,
        net: SpikingNetwork,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        input_shape: tuple[int, ...] | None = None,
        calibration: torch.Tensor | None = None,
    ):
        if not (input_shape or net.input_shape):
            raise ValueError("IntegerNetwork needs the input shape: give input_shape=(C, H, W) or (features,)")
        shape = tuple(input_shape or net.input_shape or ())
        self.num_steps = net.num_steps
        self.layers: list[IntegerBlock | IntegerPool | IntegerFlatten] = []
        mean_t, std_t = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        per_channel = 1.0 / (255.0 * std_t)  # of the input, folded into the first block
        factor = 1.0  # of a later block's input: 1/k^2 after sum pooling
        first = True
        exact: list[tuple[torch.Tensor, torch.Tensor]] = []  # per block: unrounded (bias, weight) in units of s_c
        for layer in net.layers:
            if isinstance(layer, SpikingBlock):
                weight, bias = layer.weight_and_bias()
                w = weight.detach().double()
                b = None if bias is None else bias.detach().double()
                conv = layer if isinstance(layer, SpikingConv2d) else None
                if first:  # pixels in: fold (p/255 - mean)/std, the mean as a constant input
                    per_input = _over_inputs(per_channel, layer)
                    constant = -mean_t / std_t
                    if conv is not None:
                        image = constant.view(1, -1, 1, 1).expand(1, -1, *shape[1:])
                        b = F.conv2d(image, w, b, padding=conv.padding)[0]
                    else:
                        b = (0 if b is None else b) + w @ _over_inputs(constant, layer)
                    w = w * (per_input.view(1, -1, 1, 1) if conv is not None else per_input)
                else:
                    w = w * factor
                p = layer.params
                q, scale, theta = _quantize(w, p.v_th)
                b = torch.zeros(q.shape[0], dtype=torch.float64) if b is None else b
                bias = b / scale.view((-1,) + (1,) * (b.dim() - 1))
                exact.append((bias, w / scale.view((-1,) + (1,) * (w.dim() - 1))))
                leak = None if math.isinf(p.tau_m) else round(p.decay * (1 << LEAK_BITS))
                self.layers.append(
                    IntegerBlock(
                        q, torch.round(bias).long(), theta, leak, p.s_max, None if conv is None else conv.padding, scale
                    )
                )
                factor, first = 1.0, False
                shape = (q.shape[0], *shape[1:]) if conv is not None else (q.shape[0],)
            elif isinstance(layer, TimePool2d):
                if layer.mode == "avg":
                    factor = factor / layer.size**2  # sum pooling here, the 1/k^2 in the next weights
                self.layers.append(IntegerPool(layer.size, layer.mode))
                shape = (shape[0], shape[1] // layer.size, shape[2] // layer.size)
            elif isinstance(layer, TimeDropout):  # training only: nothing at inference
                continue
            elif isinstance(layer, FlattenFeatures):
                self.layers.append(IntegerFlatten())
                shape = (math.prod(shape),)
            else:
                raise ValueError(f"no integer form for {type(layer).__name__}")
        if calibration is not None:
            self._correct_biases(calibration, exact)

    def _correct_biases(self, images: torch.Tensor, exact: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Give each block's bias back the mean shift its weight rounding causes on ``images``
        (see the module docstring), block after block."""
        if images.dtype != torch.uint8 or len(images) == 0:
            raise ValueError(
                f"calibration takes a non-empty batch of raw uint8 images, got {images.dtype} {tuple(images.shape)}"
            )
        blocks = [index for index, layer in enumerate(self.layers) if isinstance(layer, IntegerBlock)]
        for index, (bias, weight) in zip(blocks, exact):
            block = self.layers[index]
            assert isinstance(block, IntegerBlock)
            total = torch.zeros(())
            for begin in range(0, len(images), CHUNK):
                state = self.initial_state()
                for _ in range(self.num_steps):
                    block_input, state = self._step(images[begin : begin + CHUNK], state, stop=index)
                    total = total + block_input.double().sum(0)
            mean_input = total / (len(images) * self.num_steps)
            error = weight - block.weight.double()
            if block.padding is None:
                shift = error @ mean_input
            else:
                shift = F.conv2d(mean_input[None], error, padding=block.padding)[0]
                shift = shift if bias.dim() > 1 else shift.mean((1, 2))
            block.bias = torch.round(bias + shift).long()

    def __call__(self, pixels: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
        state = self.initial_state()
        outputs = []
        for _ in range(num_steps or self.num_steps):
            out, state = self.step(pixels, state)
            outputs.append(out)
        return torch.stack(outputs)

    def initial_state(self) -> list[torch.Tensor | None]:
        """Every block's potential at rest (made on the first step, in the input's batch size)."""
        return [None] * len(self.layers)

    def step(self, pixels: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """One step: ``uint8`` ``[B, C, H, W]`` to output spike counts ``[B, classes]`` and the next state."""
        return self._step(pixels, state)

    def _step(self, pixels: torch.Tensor, state: list, stop: int | None = None) -> tuple[torch.Tensor, list]:
        """:meth:`step`, or with ``stop``, the input of layer ``stop`` (and the state, updated up to it)."""
        if pixels.dtype != torch.uint8:
            raise TypeError(f"IntegerNetwork takes raw uint8 pixels, got {pixels.dtype}")
        x, after = pixels.long(), list(state)
        for index, layer in enumerate(self.layers):
            if index == stop:
                break
            if not isinstance(layer, IntegerBlock):
                x = layer(x)
                continue
            acc = layer.accumulate(x)
            x, after[index] = layer.neuron(acc, state[index] if state[index] is not None else torch.zeros_like(acc))
        return x, after
