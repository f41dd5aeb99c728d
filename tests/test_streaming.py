"""Streaming and time-varying input (issue 18): step by step equals the whole sequence at once,
and both equal a slow explicit simulation of the network written here."""

import math

import pytest
import torch
import torch.nn.functional as F

from mtsnn import from_spec
from mtsnn.config import PRESETS
from mtsnn.layers import SpikingBlock, SpikingConv2d
from mtsnn.models import TimePool2d

NETS = {name: PRESETS[name] for name in ("mnist-mlp", "mnist-cnn", "fmnist-cnn")}


def built(name):
    cfg = NETS[name]
    torch.manual_seed(0)
    return from_spec(cfg.spec, cfg.input_shape, 10, v_th=2.0).eval()  # a low threshold: many spikes


def stream(net, frames):
    state = net.initial_state(frames.shape[1])
    outputs = []
    for x in frames:
        out, state = net.step(x, state)
        outputs.append(out)
    return torch.stack(outputs)


def explicit(net, frames):
    """Every step by hand, with torch's own operators: the current W x + b (a same-padded
    convolution or a linear map), v = beta u + I, s = clip(floor(v / V_th), 0, S_max),
    u = v - s V_th; average pooling; flattening."""
    potentials = {}
    outputs = []
    for x in frames:
        for index, layer in enumerate(net.layers):
            if isinstance(layer, SpikingBlock):
                p = layer.params
                if isinstance(layer, SpikingConv2d):
                    current = F.conv2d(x, layer.weight, layer.bias, padding=layer.kernel_size // 2)
                else:
                    current = F.linear(x, layer.weight, layer.bias)
                v = (1 - 1 / p.tau_m) * potentials.get(index, torch.zeros_like(current)) + current
                x = torch.clamp(torch.floor(v / p.v_th), 0, p.s_max)
                potentials[index] = v - x * p.v_th
            elif isinstance(layer, TimePool2d):
                assert layer.mode == "avg"  # from_spec's default
                x = F.avg_pool2d(x, layer.size)
            else:
                x = x.flatten(1)
        outputs.append(x)
    return torch.stack(outputs)


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("steps", [1, 2, 17])
def test_step_by_step_equals_the_whole_sequence_for_images_and_for_frames(name, steps):
    net = built(name)
    images = torch.rand(8, 1, 28, 28) * 2
    frames = torch.rand(steps, 8, 1, 28, 28) * 2
    with torch.no_grad():
        held = net(images, num_steps=steps)
        assert held.shape == (steps, 8, 10) and held.sum() > 0
        assert torch.equal(stream(net, images.expand(steps, -1, -1, -1, -1)), held)
        assert torch.equal(net(frames), stream(net, frames))
        assert torch.equal(net(frames), explicit(net, frames))


def test_a_new_sequence_starts_from_rest_only_when_asked():
    net = built("mnist-mlp")
    x = torch.rand(4, 1, 28, 28) * 2
    with torch.no_grad():
        first, state = net.step(x, net.initial_state(4))
        carried, _ = net.step(x, state)
        fresh, _ = net.step(x, net.initial_state(4))
    assert torch.equal(fresh, first) and not torch.equal(carried, first)


def test_state_detach_cuts_the_graph_and_bad_states_or_step_counts_are_named():
    net = built("mnist-cnn")
    state = net.initial_state(2)
    assert [tuple(u.shape) for u in state.potentials] == [(2, 15, 28, 28), (2, 40, 14, 14), (2, 300), (2, 10)]
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    _, state = net.step(x, state)
    assert any(u.requires_grad for u in state.potentials)
    assert not any(u.requires_grad for u in state.detach().potentials)
    with pytest.raises(ValueError, match="state holds 1 potentials for 4 blocks"):
        net.step(x, type(state)(state.potentials[:1]))
    with pytest.raises(ValueError, match="num_steps=3 but the input sequence has 5 steps"):
        net(torch.rand(5, 2, 1, 28, 28), num_steps=3)


def test_an_integrate_and_fire_network_streams_too():
    torch.manual_seed(3)
    net = from_spec("784-64-10", (784,), 10, tau_m=math.inf, v_th=1.0).eval()
    frames = torch.rand(9, 5, 784)
    with torch.no_grad():
        assert torch.equal(net(frames), stream(net, frames))
        assert torch.equal(net(frames), explicit(net, frames))
