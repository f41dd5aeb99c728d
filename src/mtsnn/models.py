"""Networks from the paper's layer notation, as spiking networks or as their ANN twins.

Notation (paper, Tables 2-6): tokens joined by ``-``.

- ``NCk``: convolution with ``N`` filters of ``k x k`` ('same' padding, ``k`` odd);
- ``Pk``: ``k x k`` pooling of spikes (average by default, max as an option);
- a plain number: a fully connected layer of that width.

An all-number spec is an MLP whose first number is the input size
(``"784-800-10"``). Unless the last layer already has ``num_classes`` units
(MLPs only), an output layer of ``num_classes`` neurons is appended.

In the SNN every weight layer is followed by a multi-threshold LIF neuron and
the input is direct: the normalised image is the input current at every step,
so the first weight layer runs once per image. The ANN twin has the same layers
with ReLU and no time; its output layer gives logits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import INIT, SpikingBlock, SpikingConv2d, SpikingLinear, memory_format_of
from .neuron import lif_step

# pooling by name: (the function of spikes, the ANN twin's module)
POOLS = {"avg": (F.avg_pool2d, nn.AvgPool2d), "max": (F.max_pool2d, nn.MaxPool2d)}
POOLINGS = tuple(POOLS)
POOLING = "avg"  # the default


def pool_of(mode: str) -> tuple:
    """``POOLS[mode]``; ValueError naming ``mode`` if there is no such pooling."""
    if mode not in POOLS:
        raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLINGS)}")
    return POOLS[mode]


@dataclass(frozen=True)
class Conv:
    channels: int
    kernel: int


@dataclass(frozen=True)
class Pool:
    size: int


@dataclass(frozen=True)
class Dense:
    width: int


_TOKEN = re.compile(r"^(?:(?P<conv>\d+)[Cc](?P<kernel>\d+)|[Pp](?P<pool>\d+)|(?P<dense>\d+))$")


def parse_spec(spec: str, input_shape: tuple[int, ...], num_classes: int) -> list[Conv | Pool | Dense]:
    """Parse ``spec`` into layers, checking it against ``input_shape`` (C, H, W) and ``num_classes``."""
    tokens = spec.split("-")
    layers: list[Conv | Pool | Dense] = []
    layer: Conv | Pool | Dense
    for token in tokens:
        m = _TOKEN.match(token.strip())
        if m is None:
            raise ValueError(f"bad token {token!r} in spec {spec!r}: expected NCk (conv), Pk (pool) or a width")
        if m["conv"] is not None:
            layer = Conv(int(m["conv"]), int(m["kernel"]))
            if layer.channels < 1 or layer.kernel < 1 or layer.kernel % 2 == 0:
                raise ValueError(f"bad token {token!r} in spec {spec!r}: need >= 1 filters and an odd kernel")
        elif m["pool"] is not None:
            layer = Pool(int(m["pool"]))
            if layer.size < 1:
                raise ValueError(f"bad token {token!r} in spec {spec!r}: pool size must be >= 1")
        else:
            layer = Dense(int(m["dense"]))
            if layer.width < 1:
                raise ValueError(f"bad token {token!r} in spec {spec!r}: a layer needs at least 1 unit")
        layers.append(layer)

    dense = [layer for layer in layers if isinstance(layer, Dense)]
    if len(dense) == len(layers):  # MLP: the first number is the input size
        if dense[0].width != math.prod(input_shape):
            raise ValueError(
                f"bad token {tokens[0]!r} in spec {spec!r}: the input size is "
                f"{math.prod(input_shape)} for input shape {tuple(input_shape)}"
            )
        hidden = dense[1:-1] if dense[-1].width == num_classes else dense[1:]
        return [*hidden, Dense(num_classes)]
    if isinstance(layers[0], Pool):
        raise ValueError(f"bad token {tokens[0]!r} in spec {spec!r}: a spec cannot start with pooling")

    image = input_shape[-2:] if len(input_shape) == 3 else None  # (H, W) as pooling shrinks it
    seen_dense = False
    for token, layer in zip(tokens, layers):
        if isinstance(layer, Dense):
            seen_dense = True
        elif seen_dense:
            raise ValueError(f"bad token {token!r} in spec {spec!r}: convolution or pooling after a dense layer")
        elif image is None:
            raise ValueError(f"bad token {token!r} in spec {spec!r}: convolution needs a (C, H, W) input shape")
        elif isinstance(layer, Pool):
            image = (image[0] // layer.size, image[1] // layer.size)
            if min(image) < 1:
                raise ValueError(f"bad token {token!r} in spec {spec!r}: pooling shrinks the image to nothing")
    return layers + [Dense(num_classes)]


class NetworkState(NamedTuple):
    """What a :class:`SpikingNetwork` carries from one step to the next: each weight block's
    membrane potential after its reset, ``u[t]``, input to output."""

    potentials: tuple[torch.Tensor, ...]

    def detach(self) -> NetworkState:
        """The same state cut from the autograd graph (between chunks of a long sequence)."""
        return NetworkState(tuple(u.detach() for u in self.potentials))


class LayerCall(NamedTuple):
    """One layer's part in a forward pass (:meth:`SpikingNetwork.trace`)."""

    layer: nn.Module
    input: torch.Tensor  # [T, B, ...], or [B, ...] held for num_steps steps (direct input)
    output: torch.Tensor
    num_steps: int | None  # given with a direct input, else None


class SpikingNetwork(nn.Module):
    """A feed-forward SNN of weight blocks (weight layer + neuron), pooling and flattening.

    Input, either:

    - images ``[B, *sample]``: direct input, the same current at each of ``num_steps``
      steps (the paper's setting); the first weight layer runs once, not T times;
    - a sequence ``[T, B, *sample]``: event frames or any time-varying input, T steps.

    ``sample`` is ``(C, H, W)`` unless the first layer is a ``SpikingLinear`` (then
    ``(features,)``). Output: spike counts ``[T, B, classes]``.

    Streaming, one step at a time, for inference (the floor has no surrogate gradient here;
    train with ``forward``)::

        state = net.initial_state(batch_size)           # all potentials at rest
        for x_t in frames:                              # each [B, *sample]
            out_t, state = net.step(x_t, state)         # out_t: [B, classes]

    gives, step by step, the rows of ``net(frames)``. A new sequence starts from
    ``initial_state`` again; ``state.detach()`` cuts the autograd graph.

    Built by :func:`from_spec`:

    >>> net = from_spec("15C5-P2-40C5-P2-300", (1, 28, 28), 10)
    >>> net(torch.rand(8, 1, 28, 28)).shape              # images, held for num_steps = 2
    torch.Size([2, 8, 10])
    >>> net(torch.rand(5, 8, 1, 28, 28)).shape           # a sequence of 5 frames
    torch.Size([5, 8, 10])
    >>> " ".join(type(block).__name__ for block in net.blocks())
    'SpikingConv2d SpikingConv2d SpikingLinear SpikingLinear'
    """

    layers: nn.ModuleList

    def __init__(self, layers: nn.ModuleList, num_steps: int = 2, input_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.layers = layers
        self.num_steps = num_steps
        self.input_shape = tuple(input_shape) if input_shape is not None else None

    def forward(self, x: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
        sequence = x.dim() == self._sample_dims() + 2
        if sequence and num_steps not in (None, x.shape[0]):
            raise ValueError(f"num_steps={num_steps} but the input sequence has {x.shape[0]} steps")
        steps = x.shape[0] if sequence else self.num_steps if num_steps is None else num_steps
        if steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {steps}")
        direct = not sequence
        for layer in self.layers:
            if isinstance(layer, SpikingBlock):
                x = layer(x, num_steps=steps if direct else None)
                direct = False
            else:  # pooling or flattening (of the images themselves, before the first block)
                x = layer(x)
        return x

    @torch.no_grad()
    def trace(self, x: torch.Tensor, num_steps: int | None = None) -> list[LayerCall]:
        """A forward pass of ``x`` (as :meth:`forward`, without gradients), layer by layer:
        what each layer was given and gave. For tools that look inside a network (operation
        counts, state shapes) without walking its layers again."""
        calls: list[LayerCall] = []

        def keep(layer, args, kwargs, output):
            calls.append(LayerCall(layer, args[0], output, kwargs.get("num_steps")))

        handles = [layer.register_forward_hook(keep, with_kwargs=True) for layer in self.layers]
        try:
            self(x, num_steps)
        finally:
            for handle in handles:
                handle.remove()
        return calls

    def _sample_dims(self) -> int:
        return 1 if isinstance(self.layers[0], SpikingLinear) else 3

    def blocks(self) -> list[SpikingBlock]:
        """The weight+neuron blocks, input to output."""
        return [layer for layer in self.layers if isinstance(layer, SpikingBlock)]

    def initial_state(self, batch_size: int, input_shape: tuple[int, ...] | None = None) -> NetworkState:
        """Every block's potential at rest (zeros) for ``batch_size`` inputs of ``input_shape``
        (default: the shape the network was built for)."""
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError(
                "initial_state needs the input shape: this network was built without one; "
                "give input_shape=(C, H, W) or (features,)"
            )
        weight = self.blocks()[0].weight
        sample = torch.zeros(1, *shape, dtype=weight.dtype, device=weight.device)
        potentials = [
            torch.zeros(batch_size, *call.output.shape[2:], dtype=torch.float32, device=weight.device)
            for call in self.trace(sample, num_steps=1)
            if isinstance(call.layer, SpikingBlock)
        ]
        return NetworkState(tuple(potentials))

    def step(self, x: torch.Tensor, state: NetworkState) -> tuple[torch.Tensor, NetworkState]:
        """One time step from ``state``: the input ``x`` ``[B, *sample]`` gives the output spike
        counts ``[B, classes]`` and the next state (eqs. 4-5 for each block, :func:`lif_step`).

        A block with batch norm folds it into its weights at every call (the shipped mnist-cnn:
        872 us a step, 651 us folded once, in two runs of ``benchmarks/bench_latency.py``). To
        stream, fold once into a network built without it:

        >>> net = from_spec("784-30-10", batch_norm=True).eval()
        >>> plain = from_spec("784-30-10").eval()
        >>> _ = plain.load_state_dict(folded_parameters(net))
        >>> image = torch.rand(1, 1, 28, 28)
        >>> torch.equal(net.step(image, net.initial_state(1))[0], plain.step(image, plain.initial_state(1))[0])
        True
        """
        if len(state.potentials) != len(self.blocks()):
            raise ValueError(
                f"state holds {len(state.potentials)} potentials for {len(self.blocks())} blocks; "
                "make it with initial_state"
            )
        potentials, after = iter(state.potentials), []
        for layer in self.layers:
            if isinstance(layer, SpikingBlock):
                current = layer.synapse(x, *layer.weight_and_bias())
                x, u = lif_step(current, next(potentials), layer.params)
                after.append(u)
            elif not isinstance(layer, TimeDropout):  # dropout: training only
                x = layer(x)
        return x, NetworkState(tuple(after))


class TimePool2d(nn.Module):
    """2-D pooling of spikes ``[T, B, C, H, W]`` (time folded into the batch), to
    ``[T, B, C, H / size, W / size]``.

    >>> TimePool2d(2)(torch.ones(2, 8, 15, 28, 28)).shape
    torch.Size([2, 8, 15, 14, 14])
    """

    def __init__(self, size: int, mode: str = POOLING):
        super().__init__()
        self.pool = pool_of(mode)[0]
        self.size, self.mode = size, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.flatten(0, -4), self.size).unflatten(0, x.shape[:-3])

    def extra_repr(self) -> str:
        return f"{self.mode}, size={self.size}"


class TimeDropout(nn.Module):
    """Dropout of spikes ``[T, B, ...]`` with one mask per sample for all ``T`` steps: a dropped
    neuron is silent for the whole input (as SpikingJelly's ``layer.Dropout`` in multi-step
    mode), and a kept one's counts are scaled by ``1 / (1 - p)``. The identity in eval mode,
    and in :meth:`SpikingNetwork.step`, which is for inference. Not in the paper (which used no
    dropout); :func:`from_spec` puts one before every fully connected block that takes spikes.

    >>> drop = TimeDropout(0.5).train()
    >>> counts = drop(torch.ones(2, 4, 1000))               # [T, B, features]
    >>> bool((counts[0] == counts[1]).all())                 # the same neurons at both steps
    True
    >>> sorted(counts.unique().tolist())                     # dropped, or kept and scaled
    [0.0, 2.0]
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout p={p} (need 0 <= p < 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty(x.shape[1:], dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * (keep / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _FlattenKeepingLayout(torch.autograd.Function):
    """``x.flatten(-3)`` whose gradient is channels-last when ``x`` is (else C-contiguous).
    A plain flatten returns a C-contiguous gradient, and pooling's backward then takes a slow
    path for a channels-last input (fmnist-cnn: 14.7 ms instead of 1.6 ms per step on 2 CPU cores)."""

    @staticmethod
    def forward(ctx, x):
        images = x.flatten(0, -4) if x.dim() >= 4 else x
        ctx.shape = x.shape
        ctx.channels_last = memory_format_of(images) == torch.channels_last
        return x.flatten(-3)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.reshape(ctx.shape)
        if not ctx.channels_last:
            return grad
        return grad.flatten(0, -4).contiguous(memory_format=torch.channels_last).view(ctx.shape)


class FlattenFeatures(nn.Module):
    """Flatten the (C, H, W) features of ``[..., C, H, W]``, keeping the time and batch dims.

    >>> FlattenFeatures()(torch.ones(2, 8, 40, 4, 4)).shape
    torch.Size([2, 8, 640])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FlattenKeepingLayout.apply(x)


class _Stop(Exception):
    """Ends a forward pass early, once a hook has what it needs."""


def kept_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """``module``'s parameters by name, a block's float weight under ``--qat`` (read through
    ``torch.nn.utils.parametrize``, kept as ``parametrizations.weight.original``) named as the
    weight it stands for: the tensors an optimizer or a rescaling should change."""
    return {name.replace("parametrizations.weight.original", "weight"): p for name, p in module.named_parameters()}


def folded_parameters(net: SpikingNetwork) -> dict[str, torch.Tensor]:
    """Each block's weight and bias as it applies them in eval mode, a batch norm's running
    statistics folded in (:meth:`~mtsnn.layers.SpikingBlock.weight_and_bias`), by the names
    they have in a network built without batch norm."""
    parameters = {}
    for name, module in net.named_modules():
        if isinstance(module, SpikingBlock):
            weight, bias = module.weight_and_bias()
            parameters[f"{name}.weight"] = weight.detach()
            if bias is not None:
                parameters[f"{name}.bias"] = bias.detach()
    return parameters


@torch.no_grad()
def calibrate(net: SpikingNetwork, images: torch.Tensor, current_std: float) -> list[float]:
    """Scale each block's weights, input to output, so that its input current on ``images``
    has a standard deviation of ``current_std`` thresholds; return the factors.

    A data-dependent start in the manner of LSUV (Mishkin & Matas, 2016), measured in
    thresholds: with a fixed initialisation, activity grows or dies out with depth (on the
    7-layer cifar10-cnn, eq. 17 leaves 19% of the output counts at S_max and 49% at 0, scaled
    Kaiming 99.9% at 0: ``results/cifar10-cpu``). Block ``l`` is scaled after the blocks below
    it, on the spikes they now send; its current is linear in its weights (biases start at 0),
    so one pass per block is exact.

    Input: ``images`` as the network takes them (``[B, *sample]`` or ``[T, B, *sample]``).

    >>> net = from_spec("96C3-256C3-P2-1024", (3, 32, 32), 10)
    >>> factors = calibrate(net, torch.rand(16, 3, 32, 32), 1.0)
    >>> len(factors)                       # one per block, input to output
    4
    """
    factors = []
    for index, block in enumerate(net.blocks()):
        seen: list[torch.Tensor] = []

        def capture(module, args, seen=seen):
            seen.append(args[0])
            raise _Stop  # the layers above this block are not needed yet

        handle = block.register_forward_pre_hook(capture)
        try:
            net(images)
        except _Stop:
            pass
        finally:
            handle.remove()
        x = seen[0]
        samples = x if x.dim() == len(block.INPUT) + 1 else x.flatten(0, 1)  # [B, ...] or [T * B, ...]
        spread = block.synapse(samples, block.weight, None).float().std().item()
        if not spread > 0:
            raise ValueError(f"calibrate: block {index} gets no input from these images; nothing to scale")
        factor = current_std * block.params.v_th / spread
        # under --qat the block reads a rounded copy of the weight it keeps; scale the kept one
        # (the rounding's scale follows the weight's largest value, so the copy scales alike)
        kept_parameters(block)["weight"].mul_(factor)
        factors.append(factor)
    return factors


def _build(
    layers,
    input_shape,
    make_conv,
    make_dense,
    make_pool,
    activation=None,
    make_output=None,
    make_dropout=None,
    make_norm=None,
) -> list[nn.Module]:
    """The modules of parsed ``layers``; ``make_output`` (default ``make_dense``) makes the last one;
    ``make_dropout``, if given, goes before every fully connected layer but one that takes the input;
    ``make_norm(layer, features)``, if given, after every weight layer but the last (ANN twin)."""
    modules: list[nn.Module] = []
    channels = input_shape[0]
    features = None if len(input_shape) == 3 else math.prod(input_shape)
    height, width = input_shape[1:] if len(input_shape) == 3 else (1, 1)  # an MLP never uses them
    for index, layer in enumerate(layers):
        if isinstance(layer, Conv):
            modules.append(make_conv(channels, layer.channels, layer.kernel))
            channels = layer.channels
        elif isinstance(layer, Pool):
            modules.append(make_pool(layer.size))
            height, width = height // layer.size, width // layer.size
        else:
            if features is None:
                modules.append(FlattenFeatures())
                features = channels * height * width
            if make_dropout is not None and index > 0:
                modules.append(make_dropout())
            last = index == len(layers) - 1
            modules.append((make_output if last and make_output is not None else make_dense)(features, layer.width))
            features = layer.width
        if make_norm is not None and not isinstance(layer, Pool) and index < len(layers) - 1:
            modules.append(make_norm(layer, channels if isinstance(layer, Conv) else features))
        if activation is not None and not isinstance(layer, Pool) and index < len(layers) - 1:
            modules.append(activation())
    return modules


def from_spec(
    spec: str,
    input_shape: tuple[int, ...] = (1, 28, 28),
    num_classes: int = 10,
    *,
    ann: bool = False,
    pooling: str = POOLING,
    init: str | None = None,
    num_steps: int = 2,
    output_surrogate: str | None = None,
    dropout: float = 0.0,
    batch_norm: bool = False,
    **neuron,
) -> nn.Module:
    """Build the paper's network ``spec`` for inputs of ``input_shape``: (C, H, W) images, or
    (features,) for a network of fully connected layers only.

    Input: images ``[B, *input_shape]`` (held for ``num_steps`` steps) or a sequence
    ``[T, B, *input_shape]``. Output: the SNN's spike counts ``[T, B, num_classes]``; the
    ANN twin's logits ``[B, num_classes]``.

    >>> net = from_spec("15C5-P2-40C5-P2-300", (1, 28, 28), 10)       # Table 1's MNIST CNN
    >>> net(torch.rand(4, 1, 28, 28)).shape
    torch.Size([2, 4, 10])
    >>> from_spec("784-800-10", ann=True)(torch.rand(4, 1, 28, 28)).shape
    torch.Size([4, 10])

    ``ann=True`` gives the ANN twin (ReLU, PyTorch's default init, logits out).
    ``init`` (SNN only): ``"paper"`` (eq. 17, the default: it trained best, see
    the README) or ``"kaiming"`` (:meth:`mtsnn.layers.SpikingBlock.reset_parameters`).
    ``**neuron``: neuron settings, as for :class:`mtsnn.MultiThresholdLIF`; ``grad_mode`` defaults to ``"paper"``.

    Every weight layer has a bias, starting at 0: a learned constant input current that
    eq. (3), ``I = sum_j w_ij s_j``, leaves out; the paper does not say whether its code had one.

    ``output_surrogate`` (SNN only) replaces the surrogate of the output layer alone. With
    f2, an output neuron whose potential fell a few widths below threshold for every input
    gets no gradient: its class is never predicted again. A curve with a heavy tail
    (``"arctan"``) keeps a gradient there, while hidden neurons keep the paper's curve.

    ``dropout`` > 0 (not in the paper) puts a dropout layer before every fully connected
    layer but one that reads the input itself: :class:`TimeDropout` in the SNN,
    ``nn.Dropout`` in the ANN twin. With 0 there is none, and the layers are numbered as
    without the option.

    ``batch_norm`` (not in the paper) normalises every hidden weight layer's output per channel
    over the batch while training: the SNN's blocks their current
    (:class:`~mtsnn.layers.SpikingBlock`, folded into weight and bias in eval mode), the ANN
    twin by ``nn.BatchNorm2d``/``nn.BatchNorm1d`` before each ReLU. The output layer is left as is.
    """
    layers = parse_spec(spec, tuple(input_shape), num_classes)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout} (need 0 <= dropout < 1; 0 means none)")
    _, ann_pool = pool_of(pooling)
    if ann:
        if neuron or output_surrogate is not None or init is not None:
            given = (
                sorted(neuron)
                + ["output_surrogate"] * (output_surrogate is not None)
                + [f"init={init!r}"] * (init is not None)
            )
            raise ValueError(f"the ANN twin takes no neuron settings and PyTorch's default init, got {given}")
        modules = _build(
            layers,
            input_shape,
            lambda i, o, k: nn.Conv2d(i, o, k, padding=k // 2),
            nn.Linear,
            ann_pool,
            activation=nn.ReLU,
            make_dropout=(lambda: nn.Dropout(dropout)) if dropout else None,
            make_norm=(lambda layer, n: (nn.BatchNorm2d if isinstance(layer, Conv) else nn.BatchNorm1d)(n))
            if batch_norm
            else None,
        )
        return nn.Sequential(*modules)
    output_neuron = neuron if output_surrogate is None else {**neuron, "surrogate": output_surrogate}
    modules = _build(
        layers,
        input_shape,
        lambda i, o, k: SpikingConv2d(i, o, k, batch_norm=batch_norm, **neuron),
        lambda i, o: SpikingLinear(i, o, batch_norm=batch_norm, **neuron),
        lambda size: TimePool2d(size, pooling),
        make_output=lambda i, o: SpikingLinear(i, o, **output_neuron),
        make_dropout=(lambda: TimeDropout(dropout)) if dropout else None,
    )
    network = SpikingNetwork(nn.ModuleList(modules), num_steps, input_shape)
    for block in network.blocks():
        block.reset_parameters(init or INIT)
    return network
