"""Gradients of every grad mode against slow per-time-step references of the equations.

``bptt`` and ``bptt-detach``: autograd through an explicit per-step loop.
``paper``: eqs. (7)-(13) written out, with the trace of eq. (12) kept per weight.
"""

import pytest
import torch
import torch.nn.functional as F

import mtsnn
from mtsnn.layers import SpikingBlock, SpikingLinear
from mtsnn.models import FlattenFeatures, TimePool2d
from reference import full_f1, full_f2, full_f3

# Table 1's neuron, and two others that change every setting the gradients depend on
TABLE_1 = dict(v_th=10.0, tau_m=10.0, s_max=15, surrogate="f2", alpha_h=1.0, alpha_w=20.0)
OTHER_NEURONS = [
    dict(v_th=4.0, tau_m=4.0, s_max=5, surrogate="f1", alpha_h=0.5, alpha_w=8.0),
    dict(v_th=2.0, tau_m=2.0, s_max=3, surrogate="f3", alpha_h=1.5, alpha_w=20.0),
]
REFERENCE_CURVES = {"f1": full_f1, "f2": full_f2, "f3": full_f3}


def beta(neuron):
    return 1 - 1 / neuron["tau_m"]


def curve(neuron, v):
    return REFERENCE_CURVES[neuron["surrogate"]](
        v, neuron["alpha_h"], neuron["alpha_w"], neuron["v_th"], neuron["s_max"]
    )


def staircase(neuron, v):
    return torch.clamp(torch.floor(v / neuron["v_th"]), 0, neuron["s_max"])


NETWORKS = [
    ("20-12-8-5", (1, 4, 5), 5, "avg"),  # MLP with two hidden layers
    ("3C3-P2-4C3-6", (2, 8, 8), 4, "avg"),  # small CNN with pooling
    ("3C3-P2-4C3-6", (2, 8, 8), 4, "max"),
]


class _StaircaseWithSurrogate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, neuron):
        ctx.save_for_backward(v)
        ctx.neuron = neuron
        return staircase(neuron, v)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * curve(ctx.neuron, v), None


def pool_op(layer):
    return (F.avg_pool2d if layer.mode == "avg" else F.max_pool2d), layer.size


def step_forward(net, images, T, reset_detached=None, neuron=TABLE_1):
    """Per-step forward. Records each block's input x[t], potential v[t] and spikes s[t];
    each pooling/flatten's input. With ``reset_detached`` set, spikes carry autograd."""
    u = {}
    rec = {i: {"x": [], "v": [], "s": []} for i in range(len(net.layers))}
    out = []
    for _ in range(T):
        x = images
        for i, layer in enumerate(net.layers):
            rec[i]["x"].append(x)
            if isinstance(layer, TimePool2d):
                pool, size = pool_op(layer)
                x = pool(x, size)
                continue
            if isinstance(layer, FlattenFeatures):
                x = x.flatten(1)
                continue
            if isinstance(layer, SpikingLinear):
                current = F.linear(x, layer.weight, layer.bias)
            else:
                current = F.conv2d(x, layer.weight, layer.bias, padding=layer.kernel_size // 2)
            v = beta(neuron) * u.get(i, 0) + current
            if reset_detached is None:
                s = staircase(neuron, v)
            else:
                s = _StaircaseWithSurrogate.apply(v, neuron)
            u[i] = v - (s.detach() if reset_detached else s) * neuron["v_th"]
            rec[i]["v"].append(v)
            rec[i]["s"].append(s)
            x = s
        out.append(x)
    return torch.stack(out), rec


def eq6_loss(out, target):
    return 0.5 * ((out - target) ** 2).sum()


def make(spec, shape, classes, pooling, grad_mode, T, seed=0, neuron=TABLE_1):
    torch.manual_seed(seed)
    net = mtsnn.from_spec(
        spec, shape, classes, pooling=pooling, grad_mode=grad_mode, num_steps=T, init="kaiming", **neuron
    ).double()  # fires in these tiny layers
    images = torch.randn(8, *shape, dtype=torch.float64) * 3
    target = torch.rand(T, 8, classes, dtype=torch.float64) * 3
    return net, images, target


def paper_reference_grads(net, images, target, T, neuron=TABLE_1):
    """Eqs. (7)-(13), one time step at a time, with the per-weight trace e[t] of eq. (12)."""
    v_th = neuron["v_th"]
    with torch.no_grad():
        out, rec = step_forward(net, images, T, neuron=neuron)
    grads = {p: torch.zeros_like(p) for p in net.parameters()}
    traces = {}
    for t in range(T):
        g = out[t] - target[t]  # dL[t]/ds^L[t] for eq. (6)
        for i in reversed(range(len(net.layers))):
            layer, x = net.layers[i], rec[i]["x"][t]
            if isinstance(layer, (TimePool2d, FlattenFeatures)):  # ordinary backward of pooling/flatten
                xg = x.clone().requires_grad_(True)
                y = pool_op(layer)[0](xg, layer.size) if isinstance(layer, TimePool2d) else xg.flatten(1)
                (g,) = torch.autograd.grad(y, xg, g)
                continue
            f = curve(neuron, rec[i]["v"][t])
            delta = f * g  # eqs. (9)-(10)
            if isinstance(layer, SpikingLinear):
                inputs, f_flat, delta_flat = x[:, None, :], f[:, :, None], delta
                g = delta @ layer.weight  # (W)^T delta, to the layer below
            else:
                k = layer.kernel_size
                patches = F.unfold(x, k, padding=k // 2)  # [B, C k k, P]
                inputs = patches[:, None, :, :]
                f_flat, delta_flat = f.flatten(2)[:, :, None, :], delta.flatten(2)
                w = layer.weight.flatten(1)  # [O, C k k]
                g = F.fold(w.T @ delta_flat, x.shape[-2:], k, padding=k // 2)
            # eq. (12): e[t] = (beta e[t-1] + x[t]) / (1 + f(v[t]) V_th), e[0] = 0; same for the bias with x = 1
            e_w = (beta(neuron) * traces.get((i, "w"), 0) + inputs) / (1 + f_flat * v_th)
            e_b = (beta(neuron) * traces.get((i, "b"), 0) + 1) / (1 + f * v_th)
            traces[(i, "w")], traces[(i, "b")] = e_w, e_b
            if isinstance(layer, SpikingLinear):
                grads[layer.weight] += torch.einsum("bo,boi->oi", delta, e_w)
                grads[layer.bias] += (delta * e_b).sum(0)
            else:
                grads[layer.weight] += torch.einsum("bop,bocp->oc", delta_flat, e_w).reshape(layer.weight.shape)
                grads[layer.bias] += (delta * e_b).sum((0, 2, 3))
    return [grads[p] for p in net.parameters()]


def assert_fires_everywhere(rec, net):
    for i, layer in enumerate(net.layers):
        if isinstance(layer, SpikingBlock):
            assert torch.stack(rec[i]["s"]).sum() > 0, f"layer {i} never fires: the test would be vacuous"


@pytest.mark.parametrize("T", [1, 2, 3])
@pytest.mark.parametrize("spec, shape, classes, pooling", NETWORKS)
def test_paper_mode_matches_eqs_7_to_13(spec, shape, classes, pooling, T):
    net, images, target = make(spec, shape, classes, pooling, "paper", T)
    got = torch.autograd.grad(eq6_loss(net(images), target), list(net.parameters()))
    want = paper_reference_grads(net, images, target, T)
    assert_fires_everywhere(step_forward(net, images, T)[1], net)
    for g, w in zip(got, want):
        assert w.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("grad_mode", ["bptt", "bptt-detach"])
@pytest.mark.parametrize("T", [1, 2, 3])
@pytest.mark.parametrize("spec, shape, classes, pooling", NETWORKS)
def test_bptt_modes_match_autograd_through_a_step_loop(spec, shape, classes, pooling, T, grad_mode):
    net, images, target = make(spec, shape, classes, pooling, grad_mode, T)
    params = list(net.parameters())
    got = torch.autograd.grad(eq6_loss(net(images), target), params)
    out, rec = step_forward(net, images, T, reset_detached=grad_mode == "bptt-detach")
    want = torch.autograd.grad(eq6_loss(out, target), params)
    assert_fires_everywhere(rec, net)
    for g, w in zip(got, want):
        assert w.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("grad_mode", mtsnn.GRAD_MODES)
@pytest.mark.parametrize("neuron", OTHER_NEURONS, ids=[n["surrogate"] for n in OTHER_NEURONS])
def test_every_grad_mode_follows_the_neuron_settings_and_surrogate(neuron, grad_mode):
    spec, shape, classes, pooling = NETWORKS[1]
    T = 2
    net, images, target = make(spec, shape, classes, pooling, grad_mode, T, neuron=neuron)
    params = list(net.parameters())
    got = torch.autograd.grad(eq6_loss(net(images), target), params)
    if grad_mode == "paper":
        want = paper_reference_grads(net, images, target, T, neuron=neuron)
    else:
        out, rec = step_forward(net, images, T, reset_detached=grad_mode == "bptt-detach", neuron=neuron)
        want = torch.autograd.grad(eq6_loss(out, target), params)
    assert_fires_everywhere(step_forward(net, images, T, neuron=neuron)[1], net)
    for g, w in zip(got, want):
        assert w.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("grad_mode", mtsnn.GRAD_MODES)
def test_grad_modes_share_the_forward(grad_mode):
    net, images, _ = make("3C3-P2-4C3-6", (2, 8, 8), 4, "avg", grad_mode, 3)
    with torch.no_grad():
        assert torch.equal(net(images), step_forward(net, images, 3)[0])


@pytest.mark.parametrize("grad_mode", mtsnn.GRAD_MODES)
def test_direct_input_once_equals_input_repeated_every_step(grad_mode):
    torch.manual_seed(3)
    block = SpikingLinear(6, 5, grad_mode=grad_mode).double()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    x_rep = x.detach().expand(3, 4, 6).clone().requires_grad_(True)
    once, repeated = block(x, num_steps=3), block(x_rep)
    assert torch.equal(once, repeated)
    weights = torch.rand(3, 4, 5, dtype=torch.float64)
    g_once = torch.autograd.grad((once * weights).sum(), [x, block.weight, block.bias])
    g_rep = torch.autograd.grad((repeated * weights).sum(), [x_rep, block.weight, block.bias])
    torch.testing.assert_close(g_once[0], g_rep[0].sum(0))
    for a, b in zip(g_once[1:], g_rep[1:]):
        torch.testing.assert_close(a, b)


def test_paper_mode_sends_delta_not_the_trace_to_the_layer_below():
    """Input gradient of a paper block is W^T delta[t] with delta = f(v) dL/ds (eq. 9)."""
    torch.manual_seed(4)
    block = SpikingLinear(6, 5, grad_mode="paper").double()
    x = (torch.rand(2, 4, 6, dtype=torch.float64) * 3).round().requires_grad_(True)
    s = block(x)
    grad_s = torch.rand_like(s)
    (gx,) = torch.autograd.grad(s, x, grad_s)
    with torch.no_grad():
        u, expected = 0, []
        for t in range(2):
            v = beta(TABLE_1) * u + x[t] @ block.weight.T + block.bias
            u = v - staircase(TABLE_1, v) * TABLE_1["v_th"]
            expected.append((full_f2(v) * grad_s[t]) @ block.weight)
    torch.testing.assert_close(gx, torch.stack(expected))
