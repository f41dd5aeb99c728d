"""Spikes, synaptic operations and an energy estimate per inference, beside the ANN twin.

Counting, per image and layer (all ``T`` steps together):

- **AC** (accumulate-only hardware, e.g. Loihi-style synapses): a multi-spike of count
  ``k`` reaching a synapse is ``k`` additions of the weight.
- **MAC** (hardware that multiplies a weight by a small integer): a non-zero multi-spike
  is one multiply-accumulate, whatever ``k``.
- The first layer sees the real-valued image (direct input): its current is computed
  once per image with dense multiply-accumulates, counted in both schemes.
- After average pooling a layer's input is ``(sum of k x k counts) / k^2``; the ``1/k^2``
  folds into the weights, so its events are the integer sums.
- Synapses are the weight-input products that touch a real input: at the border of a
  'same' convolution, taps that fall on the zero padding are not counted (for the ANN
  twin either).
- Neuron updates: one membrane update per neuron per step (reported, not in the energy).

Energy uses 45 nm CMOS figures from M. Horowitz, "Computing's energy problem (and what
we can do about it)", ISSCC 2014: 0.9 pJ per 32-bit float add, 3.7 pJ per 32-bit float
multiply, so 4.6 pJ per multiply-accumulate. Memory access is not counted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .layers import SpikingBlock, SpikingLinear
from .models import FlattenFeatures, SpikingNetwork, TimeDropout, TimePool2d, from_spec

E_ADD_PJ = 0.9
E_MAC_PJ = 4.6


def synapse_count(layer, events: torch.Tensor) -> torch.Tensor:
    """``sum over inputs of events x (number of real synapses leaving that input)``.

    ``events``: ``[N, features]`` or ``[N, C, H, W]``; returns a float scalar tensor.
    """
    if isinstance(layer, SpikingLinear):
        return events.sum() * layer.out_features
    k = layer.kernel_size
    taps = torch.ones(1, layer.in_channels, k, k, dtype=events.dtype, device=events.device)
    # each output position sums the events under its (clipped) window; every output channel repeats it
    return F.conv2d(events, taps, padding=layer.padding).sum() * layer.out_channels


@torch.no_grad()
def count_operations(model: SpikingNetwork, images: torch.Tensor, num_steps: int | None = None) -> dict:
    """Operation counts per image, per weight layer and in total, for a batch ``images``."""
    steps = num_steps or model.num_steps
    batch = images.shape[0]
    pooled_area = 1
    layers: list[dict] = []
    for layer, x, spikes, direct_steps in model.trace(images, steps):
        if isinstance(layer, SpikingBlock):
            dense_input = torch.ones_like(x if direct_steps else x[0])
            ann_macs = synapse_count(layer, dense_input).item() / dense_input.shape[0]
            if direct_steps:
                macs, acs, event_macs = ann_macs, 0.0, 0.0
            else:
                events = (x * pooled_area).round().flatten(0, 1)  # integer counts
                acs = synapse_count(layer, events).item() / batch
                event_macs = synapse_count(layer, (events > 0).to(events.dtype)).item() / batch
                macs = 0.0
            neurons = spikes[0, 0].numel()
            layers.append(
                {
                    "layer": parametrize.type_before_parametrizations(layer).__name__,  # as built, --qat or not
                    "neurons": neurons,
                    "firing_rate": spikes.sum().item() / spikes.numel(),
                    "spikes_per_neuron": spikes.sum().item() / (batch * neurons),
                    "dense_macs": macs,
                    "acs": acs,
                    "event_macs": event_macs,
                    "neuron_updates": float(neurons * steps),
                    "ann_macs": ann_macs,
                }
            )
            pooled_area = 1
        elif isinstance(layer, TimePool2d) and layer.mode == "avg":
            pooled_area *= layer.size * layer.size
        elif not isinstance(layer, (TimePool2d, FlattenFeatures, TimeDropout)):
            raise TypeError(f"cannot count operations through {type(layer).__name__}")
    total = {
        key: sum(row[key] for row in layers)
        for key in ("neurons", "dense_macs", "acs", "event_macs", "neuron_updates", "ann_macs")
    }
    total["spikes_per_neuron"] = sum(r["spikes_per_neuron"] * r["neurons"] for r in layers) / total["neurons"]
    total["firing_rate"] = total["spikes_per_neuron"] / steps
    energy_ac = total["dense_macs"] * E_MAC_PJ + total["acs"] * E_ADD_PJ
    energy_mac = (total["dense_macs"] + total["event_macs"]) * E_MAC_PJ
    energy_ann = total["ann_macs"] * E_MAC_PJ
    return {
        "T": steps,
        "layers": layers,
        "total": total,
        "energy_pj": {"snn_accumulate_hardware": energy_ac, "snn_mac_hardware": energy_mac, "ann_twin": energy_ann},
        "energy_ratio_to_ann": {
            "snn_accumulate_hardware": energy_ac / energy_ann,
            "snn_mac_hardware": energy_mac / energy_ann,
        },
        "assumptions": f"45 nm: {E_ADD_PJ} pJ per 32-bit float add, {E_MAC_PJ} pJ per 32-bit float MAC "
        "(Horowitz, ISSCC 2014); memory access and neuron updates not counted",
    }


def count_over_loader(model: SpikingNetwork, loader, num_steps: int | None = None) -> dict:
    """:func:`count_operations` averaged over every batch of ``loader`` (weighted by batch size)."""
    model.eval()
    acc: dict = {}
    seen = 0
    for images, _ in loader.epoch(0):
        part = count_operations(model, images, num_steps)
        n = images.shape[0]
        acc = _weighted_sum(acc, part, seen, n) if seen else part
        seen += n
    if not seen:
        raise ValueError("count_over_loader: the loader gave no batches")
    return acc


def _weighted_sum(a, b, na: int, nb: int):
    """Average of two count reports with weights ``na`` and ``nb`` (ratios recomputed after)."""
    if isinstance(a, dict):
        merged = {k: _weighted_sum(a[k], b[k], na, nb) for k in a}
        if "energy_pj" in merged:
            e = merged["energy_pj"]
            merged["energy_ratio_to_ann"] = {k: e[k] / e["ann_twin"] for k in merged["energy_ratio_to_ann"]}
        return merged
    if isinstance(a, list):
        return [_weighted_sum(x, y, na, nb) for x, y in zip(a, b)]
    if isinstance(a, float):
        return (a * na + b * nb) / (na + nb)
    return a


def ann_operations(spec: str, input_shape: tuple[int, ...], num_classes: int = 10) -> dict:
    """Multiply-accumulates and energy per image of the ANN twin of ``spec`` (same synapse count)."""
    snn = from_spec(spec, input_shape, num_classes)
    assert isinstance(snn, SpikingNetwork)  # (from_spec builds an SNN unless ann=True)
    calls = [
        call for call in snn.trace(torch.zeros(1, *input_shape), num_steps=1) if isinstance(call.layer, SpikingBlock)
    ]
    layers: list[dict] = [  # the first block's input is the image itself, the others' [T=1, 1, ...]
        {"layer": type(layer).__name__, "ann_macs": synapse_count(layer, torch.ones_like(x if steps else x[0])).item()}
        for layer, x, _, steps in calls
    ]
    macs = sum(row["ann_macs"] for row in layers)
    return {
        "layers": layers,
        "total": {"ann_macs": macs},
        "energy_pj": {"ann_twin": macs * E_MAC_PJ},
        "assumptions": f"45 nm: {E_MAC_PJ} pJ per 32-bit float MAC (Horowitz, ISSCC 2014); memory access not counted",
    }
