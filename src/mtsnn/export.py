r"""Move a trained network to Sinabs or to NIR, and back, without changing its neuron.

**Sinabs** (``pip install mtsnn[sinabs]``). mtsnn's neuron is Sinabs' ``LIF`` with
``spike_fn=MaxSpike(S_max)``, ``reset_fn=MembraneSubtract()``, ``norm_input=False`` and
no ``min_v_mem``: per step ``v = alpha v + I``, ``s = clip(trunc(v / V_th), 0, S_max)`` for
``v > 0`` (the same as eq. (5)'s floor), ``v -= s V_th``. Sinabs writes the leak as
``alpha = exp(-1/tau_mem)``, so ``tau_mem = -1 / ln(1 - 1/tau_m)``; :func:`to_sinabs` sets
``alpha`` itself to mtsnn's ``1 - 1/tau_m`` (``train_alphas=True``, frozen), so that no
rounding of the exponential can move a spike. ``tau_m = inf`` is Sinabs' ``IAF``.
Sinabs layers take time folded into the batch, ``[B*T, ...]`` (``...Squeeze`` layers),
and keep their state between calls: :func:`run_sinabs` resets it and feeds the image at
every step, as mtsnn's direct input does.

**NIR** (``pip install mtsnn[nir]``). NIR's nodes are continuous-time. The graph
:func:`to_nir` writes uses standard nodes (``Input``, ``Conv2d``, ``Affine``, ``LIF`` or
``IF``, ``AvgPool2d``, ``Flatten``, ``Output``) and Sinabs' discretisation of ``LIF``, one
time step as the unit: ``tau = -1/ln(1 - 1/tau_m)``, ``r = 1``, ``v_leak = 0``. NIR has no
spike count and its neurons reset to ``v_reset`` (or, before nir 1.0.5, subtract a single
threshold), so the multi-threshold semantics travel in each neuron node's metadata:
``mtsnn_s_max`` and ``mtsnn_reset = "subtract"``; the graph's metadata holds
``mtsnn_num_steps``. A consumer that ignores them runs a single-spike neuron;
:func:`to_nir` says so once per process. :func:`from_nir` reads them back, so a round trip
is exact. A graph another tool wrote is read as what it says: a single-spike neuron
(``S_max = 1``), and refused, naming the node, where mtsnn's layers cannot represent it
(per-neuron time constants or thresholds, a leak potential, a reset to ``v_reset`` rather
than by subtraction, sum pooling, convolutions other than stride-1 'same' ones).

Example (``images`` ``[B, 1, 28, 28]``; counts ``[T, B, 10]``)::

    >>> import torch
    >>> from mtsnn import export, pretrained
    >>> net, images = pretrained("mnist-mlp"), torch.rand(3, 1, 28, 28)
    >>> counts = export.run_sinabs(export.to_sinabs(net), images)
    >>> counts.shape, torch.equal(counts, net(images))
    (torch.Size([2, 3, 10]), True)
    >>> graph = export.to_nir(net)                               # nir.write("net.nir", graph)
    >>> torch.equal(export.from_nir(graph)(images), net(images))  # the same spikes as net
    True
"""

from __future__ import annotations

import json
import math
import warnings
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .layers import SpikingBlock, SpikingConv2d, SpikingLinear
from .models import FlattenFeatures, SpikingNetwork, TimeDropout, TimePool2d

S_MAX, RESET, NUM_STEPS = "mtsnn_s_max", "mtsnn_reset", "mtsnn_num_steps"  # NIR metadata keys
_warned = False


class ExportError(ValueError):
    """A network or graph with a part the other side cannot represent; the message names it."""


def _need(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(f"this needs the {module} package: pip install mtsnn[{extra}]") from None


def _tau_m(alpha: float) -> float:
    """mtsnn's tau_m for a leak factor ``alpha`` (1 - 1/tau_m), rounded to an integer where it is
    one to float32 precision, so that a round trip gives back the configured value."""
    if alpha >= 1.0:
        return math.inf
    tau_m = 1.0 / (1.0 - alpha)
    return float(round(tau_m)) if abs(tau_m - round(tau_m)) < 1e-4 * tau_m else tau_m


def _walk(net: SpikingNetwork):
    """(kind, layer) for each part of ``net``; ExportError for a part with no counterpart."""
    if not isinstance(net, SpikingNetwork):
        raise ExportError(
            f"expected a spiking network from mtsnn.from_spec, got {type(net).__name__} "
            "(the ANN twin has no neuron to export)"
        )
    for index, layer in enumerate(net.layers):
        if isinstance(layer, TimeDropout):  # training only: nothing at inference
            continue
        # a block trained with --qat reads its weight through a parametrization, which renames
        # its class; its weight, read below, is the rounded one it computes with
        cls = parametrize.type_before_parametrizations(layer)
        kind = {SpikingConv2d: "conv", SpikingLinear: "linear", TimePool2d: "pool", FlattenFeatures: "flatten"}.get(cls)
        if kind is None:
            raise ExportError(f"layer {index} ({cls.__name__}) has no counterpart outside mtsnn")
        yield kind, layer


def _build(parts: list, num_steps: int, input_shape: tuple[int, ...] | None = None) -> SpikingNetwork:
    """A SpikingNetwork from (kind, settings) parts, as from_spec builds them."""
    modules: list[nn.Module] = []
    block: SpikingBlock
    for kind, s in parts:
        if kind == "conv":
            block = SpikingConv2d(s["in"], s["out"], s["kernel"], bias=s["bias"] is not None, **s["neuron"])
        elif kind == "linear":
            block = SpikingLinear(s["in"], s["out"], bias=s["bias"] is not None, **s["neuron"])
        elif kind == "pool":
            modules.append(TimePool2d(s["size"], s["mode"]))
            continue
        else:
            modules.append(FlattenFeatures())
            continue
        with torch.no_grad():
            block.weight.copy_(torch.as_tensor(np.asarray(s["weight"]), dtype=torch.float32))
            if block.bias is not None:
                block.bias.copy_(torch.as_tensor(np.asarray(s["bias"]), dtype=torch.float32))
        modules.append(block)
    return SpikingNetwork(nn.ModuleList(modules), num_steps, input_shape)


def _neuron_settings(v_th: float, tau_m: float, s_max: int, neuron: dict) -> dict:
    """Neuron keyword arguments: the exported ones, then training settings (surrogate, ...)
    from ``neuron``, defaulting to from_spec's."""
    return {"grad_mode": "paper", **neuron, "v_th": float(v_th), "tau_m": tau_m, "s_max": int(s_max)}


def _conv_part(where: str, weight: np.ndarray, bias: np.ndarray | None, stride, padding, dilation, groups) -> tuple:
    """The ("conv", settings) part of a convolution another tool wrote; ExportError naming
    ``where`` unless it is a stride-1 'same' one with an odd square kernel, as mtsnn's are."""
    k = weight.shape[-1]
    same = padding == "same" if isinstance(padding, str) else bool(np.all(np.asarray(padding) == k // 2))
    if (
        weight.shape[-2] != k
        or k % 2 == 0
        or np.any(np.asarray(stride) != 1)
        or np.any(np.asarray(dilation) != 1)
        or groups != 1
        or not same
    ):
        raise ExportError(
            f"{where}: mtsnn's convolutions are stride-1 'same' ones with an odd square kernel, got "
            f"kernel {tuple(weight.shape[-2:])}, stride {stride}, padding {padding}, dilation "
            f"{dilation}, groups {groups}"
        )
    return "conv", {"in": weight.shape[1], "out": weight.shape[0], "kernel": k, "weight": weight, "bias": bias}


def _pool_part(where: str, kernel, stride, padding, mode: str) -> tuple:
    """The ("pool", settings) part of a pooling another tool wrote; ExportError naming ``where``
    unless it pools k x k windows with stride k and no padding, as mtsnn does."""
    k = np.unique(np.asarray(kernel))
    if (
        k.size != 1
        or np.any(np.asarray(kernel if stride is None else stride) != k[0])
        or np.any(np.asarray(padding) != 0)
    ):
        raise ExportError(
            f"{where}: mtsnn pools k x k windows with stride k and no padding, got kernel {kernel}, "
            f"stride {stride}, padding {padding}"
        )
    return "pool", {"size": int(k[0]), "mode": mode}


# --- Sinabs ---------------------------------------------------------------------------------


def _sinabs_layers(net: SpikingNetwork, num_steps: int) -> list[dict]:
    """What :func:`to_sinabs` builds, as plain data (the layer list :func:`save_sinabs` stores)."""
    layers = []
    for kind, layer in _walk(net):
        if kind in ("conv", "linear"):
            out_size, in_size = layer.weight.shape[:2]
            bias = layer.weight_and_bias()[1] is not None  # a batch norm folds into a bias
            layers.append(
                {"layer": "Conv2d", "in": in_size, "out": out_size, "kernel": layer.weight.shape[-1], "bias": bias}
                if kind == "conv"
                else {"layer": "Linear", "in": in_size, "out": out_size, "bias": bias}
            )
            p = layer.params
            layers.append(
                {
                    "layer": "IAFSqueeze" if math.isinf(p.tau_m) else "LIFSqueeze",
                    "v_th": float(p.v_th),
                    "s_max": int(p.s_max),
                    "alpha": float(p.decay),
                    "num_timesteps": int(num_steps),
                }
            )
        elif kind == "pool":
            layers.append({"layer": "AvgPool2d" if layer.mode == "avg" else "MaxPool2d", "size": layer.size})
        else:
            layers.append({"layer": "Flatten"})
    return layers


def _sinabs_model(layers: list[dict]) -> nn.Sequential:
    """The Sinabs ``nn.Sequential`` of a :func:`_sinabs_layers` list (weights uninitialised)."""
    sl = _need("sinabs", "sinabs").layers
    from sinabs.activation import MaxSpike, MembraneSubtract

    modules: list[nn.Module] = []
    for d in layers:
        kind = d["layer"]
        if kind == "Conv2d":
            modules.append(nn.Conv2d(d["in"], d["out"], d["kernel"], padding=d["kernel"] // 2, bias=d["bias"]))
        elif kind == "Linear":
            modules.append(nn.Linear(d["in"], d["out"], bias=d["bias"]))
        elif kind in ("LIFSqueeze", "IAFSqueeze"):
            common = dict(
                spike_threshold=torch.tensor(d["v_th"]),
                spike_fn=MaxSpike(d["s_max"]),
                reset_fn=MembraneSubtract(),
                min_v_mem=None,
                num_timesteps=d["num_timesteps"],
            )
            if kind == "IAFSqueeze":
                modules.append(sl.IAFSqueeze(**common))
                continue
            neuron = sl.LIFSqueeze(tau_mem=-1.0 / math.log(d["alpha"]), norm_input=False, train_alphas=True, **common)
            neuron.alpha_mem.requires_grad_(False)
            with torch.no_grad():
                neuron.alpha_mem.fill_(d["alpha"])  # mtsnn's leak itself, not exp(-1/tau_mem) rounded
            modules.append(neuron)
        elif kind in ("AvgPool2d", "MaxPool2d"):
            modules.append(getattr(nn, kind)(d["size"]))
        elif kind == "Flatten":
            modules.append(nn.Flatten())
        else:
            raise ExportError(f"unknown layer {kind!r} in a Sinabs layer list")
    return nn.Sequential(*modules)


def to_sinabs(net: SpikingNetwork, num_steps: int | None = None) -> nn.Sequential:
    """The Sinabs twin of ``net``: ``nn.Conv2d``/``nn.Linear`` with the same weights (in the same
    memory layout, so that both sum in the same order and give the same counts), each followed
    by ``LIFSqueeze`` (``IAFSqueeze`` for ``tau_m = inf``) with ``MaxSpike(S_max)`` and
    ``MembraneSubtract``; ``nn.AvgPool2d``/``nn.MaxPool2d``; ``nn.Flatten``.

    Input ``[B*T, C, H, W]`` (batch-major: the T steps of image 0 first), output
    ``[B*T, classes]``; :func:`run_sinabs` does the folding. ``num_steps`` defaults to ``net``'s."""
    model = _sinabs_model(_sinabs_layers(net, num_steps or net.num_steps))
    synapses = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for synapse, block in zip(synapses, net.blocks()):
            # In the source's memory layout too (mtsnn's convolutions are channels-last): a
            # convolution sums in a layout-dependent order (4.8e-7 apart at mnist-cnn's first
            # layer), and that moved 1 of 235 million first-layer counts of a trained mnist-cnn
            # on the test set, and 4 in each layer after it; in the same layout, none.
            weight, bias = block.weight_and_bias()
            synapse.weight = nn.Parameter(weight.detach().clone())
            if bias is not None and synapse.bias is not None:
                synapse.bias.copy_(bias)
    return model


def save_sinabs(net: SpikingNetwork, path, num_steps: int | None = None) -> None:
    """Write ``net``'s Sinabs twin to ``path``: its parameters (safetensors, no pickle), its
    layer list (metadata ``sinabs_layers``) and its convolutions' memory layout (metadata
    ``memory_format``, which :func:`to_sinabs` keeps for identical counts); :func:`load_sinabs`
    rebuilds it."""
    from .checkpoint import save_tensors

    steps = num_steps or net.num_steps
    model = to_sinabs(net, steps)
    kernels = [m.weight for m in model if isinstance(m, nn.Conv2d)]
    # By strides: with one input channel both layouts count as contiguous, yet they sum apart.
    channels_last = bool(kernels) and all(w.stride() == _channels_last(w).stride() for w in kernels)
    metadata = {
        "sinabs_layers": json.dumps(_sinabs_layers(net, steps)),
        "memory_format": "channels_last" if channels_last else "contiguous",
    }
    save_tensors(path, dict(model.named_parameters()), metadata)


def load_sinabs(path) -> nn.Sequential:
    """The Sinabs model that :func:`save_sinabs` wrote to ``path``."""
    from .checkpoint import CheckpointError, load_tensors

    tensors, metadata = load_tensors(path)
    if "sinabs_layers" not in metadata:
        raise CheckpointError(f"{path}: not a Sinabs model written by mtsnn (no sinabs_layers metadata)")
    layout = metadata.get("memory_format", "contiguous")  # files written before it was kept
    if layout not in ("contiguous", "channels_last"):
        raise CheckpointError(f"{path}: unknown memory_format {layout!r} (contiguous or channels_last)")
    model = _sinabs_model(json.loads(metadata["sinabs_layers"]))
    if layout == "channels_last":  # (model.to(memory_format=...) leaves a one-channel kernel as it is)
        for m in model:
            if isinstance(m, nn.Conv2d):
                m.weight = nn.Parameter(_channels_last(m.weight))
    names = dict(model.named_parameters())
    if set(names) != set(tensors):
        raise CheckpointError(
            f"{path}: its tensors {sorted(tensors)} do not fit its layer list (which needs {sorted(names)})"
        )
    with torch.no_grad():
        for name, parameter in names.items():
            parameter.copy_(tensors[name])
    return model


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor like ``weight`` with channels-last strides, even for one channel."""
    return torch.empty_like(weight, memory_format=torch.channels_last)


def run_sinabs(model: nn.Sequential, images: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
    """Output spike counts ``[T, B, classes]`` of a Sinabs model for static ``images`` ``[B, ...]``
    held for ``num_steps`` steps (default: its Squeeze layers' ``num_timesteps``), from rest."""
    sinabs = _need("sinabs", "sinabs")
    steps = num_steps or _sinabs_steps(list(model.modules()))
    sinabs.reset_states(model)
    folded = images.unsqueeze(1).expand(-1, steps, *images.shape[1:]).flatten(0, 1)
    out = model(folded)
    return out.unflatten(0, (images.shape[0], steps)).transpose(0, 1)


def _sinabs_steps(modules: list[nn.Module]) -> int:
    steps = set()
    for m in modules:
        n = getattr(m, "num_timesteps", None)
        if isinstance(n, int) and n > 0:
            steps.add(n)
    if len(steps) != 1:
        raise ExportError(
            f"cannot tell the number of time steps from the Sinabs model's layers (found "
            f"{sorted(steps) or 'none'}); give num_steps"
        )
    return steps.pop()


def from_sinabs(model: nn.Module, num_steps: int | None = None, **neuron) -> SpikingNetwork:
    """The mtsnn network of a Sinabs ``nn.Sequential`` of the layers :func:`to_sinabs` writes
    (``LIF``/``IAF`` or their ``Squeeze`` forms, ``SingleSpike`` or ``MaxSpike``, subtractive
    reset). ``neuron``: training settings for the result (surrogate, grad_mode, ...). ExportError
    naming the layer for anything mtsnn's neuron and layers cannot represent."""
    sinabs = _need("sinabs", "sinabs")
    sl = sinabs.layers
    from sinabs.activation import MaxSpike, MembraneSubtract, SingleSpike

    modules = (
        [m for m in model.modules() if not isinstance(m, nn.Sequential)]
        if isinstance(model, nn.Sequential)
        else [model]
    )
    steps = num_steps or _sinabs_steps(modules)
    parts, pending = [], None
    for index, m in enumerate(modules):
        where = f"layer {index} ({type(m).__name__})"
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if pending is not None:
                raise ExportError(f"{where}: two weight layers with no neuron between them")
            weight = m.weight.detach().numpy()
            bias = None if m.bias is None else m.bias.detach().numpy()
            pending_at = where
            if isinstance(m, nn.Conv2d):
                pending = _conv_part(where, weight, bias, m.stride, m.padding, m.dilation, m.groups)
            else:
                pending = ("linear", {"in": m.in_features, "out": m.out_features, "weight": weight, "bias": bias})
        elif isinstance(m, (sl.LIF, sl.IAF)):
            if pending is None:
                raise ExportError(f"{where}: a neuron with no weight layer before it")
            if getattr(m, "tau_syn", None) is not None or getattr(m, "alpha_syn", None) is not None:
                raise ExportError(f"{where}: has synaptic dynamics (tau_syn); mtsnn's neuron has none")
            if m.min_v_mem is not None:
                raise ExportError(f"{where}: clips the membrane at min_v_mem={m.min_v_mem.item()}; mtsnn's does not")
            if not isinstance(m, sl.IAF) and m.norm_input:
                raise ExportError(
                    f"{where}: norm_input=True scales the input by (1 - alpha); mtsnn's neuron "
                    "takes it whole (use norm_input=False, or fold the scale into the weights)"
                )
            if not isinstance(m.reset_fn, MembraneSubtract) or m.reset_fn.subtract_value not in (None,):
                raise ExportError(f"{where}: resets by {m.reset_fn!r}; mtsnn's neuron subtracts V_th per spike")
            if isinstance(m.spike_fn, MaxSpike) and m.spike_fn.max_num_spikes_per_bin:
                s_max = m.spike_fn.max_num_spikes_per_bin
            elif m.spike_fn is SingleSpike:
                s_max = 1
            else:
                raise ExportError(
                    f"{where}: spike_fn {getattr(m.spike_fn, '__name__', m.spike_fn)!r} has no "
                    "bound on spikes per step; mtsnn needs one (MaxSpike(S_max) or SingleSpike)"
                )
            threshold = m.spike_threshold.detach().flatten().unique()
            alpha = m.alpha_mem_calculated.detach().flatten().unique()
            if threshold.numel() != 1 or alpha.numel() != 1:
                raise ExportError(
                    f"{where}: one threshold and one time constant per layer are needed, got "
                    f"{threshold.numel()} and {alpha.numel()}"
                )
            pending[1]["neuron"] = _neuron_settings(threshold.item(), _tau_m(alpha.item()), s_max, neuron)
            parts.append(pending)
            pending = None
        elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
            parts.append(
                _pool_part(where, m.kernel_size, m.stride, m.padding, "avg" if isinstance(m, nn.AvgPool2d) else "max")
            )
        elif isinstance(m, nn.Flatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                raise ExportError(
                    f"{where}: only a flatten of all features (start_dim=1, end_dim=-1) has a "
                    f"counterpart, got {m.start_dim}, {m.end_dim}"
                )
            parts.append(("flatten", {}))
        elif isinstance(m, sl.SumPool2d):
            raise ExportError(
                f"{where}: sums spikes; mtsnn pools by average or maximum (scale the next layer's "
                "weights by 1/k^2 and use nn.AvgPool2d)"
            )
        else:
            raise ExportError(f"{where}: has no counterpart in mtsnn")
    if pending is not None:
        raise ExportError(f"{pending_at}: the last weight layer has no neuron after it")
    return _build(parts, steps)


# --- NIR ------------------------------------------------------------------------------------


def _warn_metadata() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "mtsnn.to_nir: NIR's LIF and IF nodes emit one spike per step and (since nir 1.0.5) reset "
            "to v_reset; mtsnn's neuron emits up to S_max spikes and subtracts V_th per spike. The graph "
            f"keeps both in each neuron node's metadata ({S_MAX}, {RESET}): a consumer that ignores that "
            "metadata will run a single-spike, reset-to-zero neuron, a different network.",
            stacklevel=3,
        )


def to_nir(net: SpikingNetwork, input_shape: tuple[int, ...] | None = None):
    """A ``nir.NIRGraph`` of ``net`` for inputs of ``input_shape`` (C, H, W, or (features,) for an
    MLP; by default the shape ``net`` was built for): a chain ``input -> 0 -> 1 -> ... -> output``
    of standard nodes, as the module docstring describes. Write it with ``nir.write(path, graph)``."""
    nir = _need("nir", "nir")
    shape = tuple(input_shape or net.input_shape or ())
    if not shape:
        raise ExportError("to_nir needs input_shape: the network records none (build it with from_spec)")
    _warn_metadata()
    nodes = {"input": nir.Input(input_type={"input": np.array(shape)})}
    for kind, layer in _walk(net):
        name = str(len(nodes) - 1)
        if kind in ("conv", "linear"):
            weight_t, bias_t = layer.weight_and_bias()
            weight = weight_t.detach().cpu().numpy()
            bias = bias_t.detach().cpu().numpy() if bias_t is not None else np.zeros(weight.shape[0], dtype=np.float32)
            if kind == "conv":
                k = weight.shape[-1]
                nodes[name] = nir.Conv2d(
                    input_shape=shape[1:], weight=weight, stride=1, padding=k // 2, dilation=1, groups=1, bias=bias
                )
                shape = (weight.shape[0], *shape[1:])
            else:
                nodes[name] = nir.Affine(weight=weight, bias=bias)
                shape = (weight.shape[0],)
            p = layer.params
            full = partial(np.full, shape, dtype=np.float32)
            meta = {S_MAX: int(p.s_max), RESET: "subtract"}
            if math.isinf(p.tau_m):
                neuron = nir.IF(r=full(1.0), v_threshold=full(p.v_th), metadata=meta)
            else:
                neuron = nir.LIF(
                    tau=full(-1.0 / math.log(p.decay)),
                    r=full(1.0),
                    v_leak=full(0.0),
                    v_threshold=full(p.v_th),
                    metadata=meta,
                )
            nodes[str(len(nodes) - 1)] = neuron
        elif kind == "pool":
            if layer.mode != "avg":
                raise ExportError(f"NIR has no max pooling node (layer {name} pools by maximum)")
            size = np.array([layer.size, layer.size])
            nodes[name] = nir.AvgPool2d(kernel_size=size, stride=size, padding=np.array([0, 0]))
            shape = (shape[0], shape[1] // layer.size, shape[2] // layer.size)
        else:
            nodes[name] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
            shape = (math.prod(shape),)
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), metadata={NUM_STEPS: int(net.num_steps)})


def write_nir(net: SpikingNetwork, path, input_shape: tuple[int, ...] | None = None) -> None:
    """Write :func:`to_nir`'s graph of ``net`` to the file ``path`` (``nir.read`` reads it)."""
    _need("nir", "nir").write(path, to_nir(net, input_shape))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _chain(graph) -> list[tuple[str, Any]]:  # NIR nodes: many classes, read by field
    """The graph's nodes from input to output; ExportError unless it is a single chain."""
    following = {}
    for a, b in graph.edges:
        if a in following:
            raise ExportError(f"node {a!r} feeds more than one node; mtsnn's networks are chains")
        following[a] = b
    starts = [name for name, node in graph.nodes.items() if type(node).__name__ == "Input"]
    if len(starts) != 1:
        raise ExportError(f"the graph needs exactly one Input node, found {len(starts)}")
    order: list[tuple[str, Any]] = []
    name = starts[0]
    while name is not None:
        if name in dict(order):
            raise ExportError(f"the graph has a cycle through node {name!r}")
        order.append((name, graph.nodes[name]))
        name = following.get(name)
    if len(order) != len(graph.nodes):
        unreached = sorted(set(graph.nodes) - {n for n, _ in order})
        raise ExportError(f"nodes {unreached} are not on the path from the input to the output")
    return order


def _uniform(node_name: str, what: str, value) -> float:
    values = np.unique(np.asarray(value, dtype=np.float64))
    if values.size != 1:
        raise ExportError(
            f"node {node_name!r}: {what} differs between neurons ({values.size} values); an mtsnn layer has one"
        )
    return float(values[0])


def from_nir(graph, num_steps: int | None = None, **neuron) -> SpikingNetwork:
    """The mtsnn network of a ``nir.NIRGraph`` (or a file ``nir.write`` wrote). Exact for a graph
    :func:`to_nir` wrote. ``num_steps``: the graph's ``mtsnn_num_steps`` unless given (a graph
    from elsewhere has none and needs it). ``neuron``: training settings for the result
    (surrogate, grad_mode, ...). ExportError naming the node for what mtsnn cannot represent."""
    nir = _need("nir", "nir")
    if not hasattr(graph, "nodes"):
        graph = nir.read(graph)
    steps = num_steps or graph.metadata.get(NUM_STEPS)
    if not steps:
        raise ExportError(
            "the graph does not say how many time steps it runs (no mtsnn_num_steps in its metadata); give num_steps"
        )
    parts, pending, input_shape = [], None, None
    for name, node in _chain(graph):
        kind = type(node).__name__
        if kind == "Input":
            input_shape = tuple(int(n) for n in np.asarray(node.input_type["input"]).ravel())
        if kind in ("Input", "Output"):
            continue
        if kind in ("Affine", "Linear", "Conv2d"):
            if pending is not None:
                raise ExportError(f"node {name!r}: a second weight layer with no neuron between")
            weight = np.asarray(node.weight, dtype=np.float32)
            bias = np.asarray(node.bias, dtype=np.float32) if kind != "Linear" else None
            pending_at = f"node {name!r}"
            if kind == "Conv2d":
                pending = _conv_part(
                    f"node {name!r}", weight, bias, node.stride, node.padding, node.dilation, node.groups
                )
            else:
                pending = ("linear", {"in": weight.shape[1], "out": weight.shape[0], "weight": weight, "bias": bias})
        elif kind in ("LIF", "IF"):
            if pending is None:
                raise ExportError(f"node {name!r}: a neuron with no weight layer before it")
            meta = {k: _text(v) for k, v in (node.metadata or {}).items()}
            ours = meta.get(RESET) == "subtract"
            v_reset = getattr(node, "v_reset", None)
            if not ours and v_reset is not None:
                raise ExportError(
                    f"node {name!r}: resets to v_reset (NIR >= 1.0.5 semantics); mtsnn's neuron "
                    "subtracts V_th per spike and cannot represent a reset to a fixed potential"
                )
            if kind == "LIF" and _uniform(name, "v_leak", node.v_leak) != 0:
                raise ExportError(f"node {name!r}: leaks towards v_leak != 0; mtsnn's neuron leaks towards 0")
            r = _uniform(name, "r", node.r)
            if r != 1.0:  # v = alpha v + r I: fold r into the weights before it (exact in real numbers)
                pending[1]["weight"] = pending[1]["weight"] * np.float32(r)
                if pending[1]["bias"] is not None:
                    pending[1]["bias"] = pending[1]["bias"] * np.float32(r)
            tau_m = math.inf if kind == "IF" else _tau_m(math.exp(-1.0 / _uniform(name, "tau", node.tau)))
            s_max = int(meta.get(S_MAX, 1))
            pending[1]["neuron"] = _neuron_settings(
                _uniform(name, "v_threshold", node.v_threshold), tau_m, s_max, neuron
            )
            parts.append(pending)
            pending = None
        elif kind == "AvgPool2d":
            parts.append(_pool_part(f"node {name!r}", node.kernel_size, node.stride, node.padding, "avg"))
        elif kind == "Flatten":
            if (node.start_dim, node.end_dim) != (0, -1):
                raise ExportError(
                    f"node {name!r}: only a flatten of all features (start_dim=0, end_dim=-1) has a "
                    f"counterpart, got {node.start_dim}, {node.end_dim}"
                )
            parts.append(("flatten", {}))
        else:
            raise ExportError(
                f"node {name!r}: NIR {kind} has no counterpart in mtsnn"
                + (" (it sums spikes; mtsnn pools by average or maximum)" if kind == "SumPool2d" else "")
            )
    if pending is not None:
        raise ExportError(f"{pending_at}: the last weight layer has no neuron after it")
    return _build(parts, int(steps), input_shape)
