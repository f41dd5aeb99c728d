"""Gradients of every grad mode against slow per-time-step references of the equations.

``bptt`` and ``bptt-detach``: autograd through an explicit per-step loop.
``paper``: eqs. (7)-(13) written out, with the trace of eq. (12) kept per weight.
"""

import pytest
import torch
import torch.nn.functional as F

import mtsnn
from mtsnn.layers import SpikingConv2d, SpikingLinear
from mtsnn.models import FlattenFeatures, TimePool2d
from reference import full_f2

V_TH, BETA, S_MAX = 10.0, 0.9, 15
NETWORKS = [("20-12-8-5", (1, 4, 5), 5, "avg"),        # MLP with two hidden layers
            ("3C3-P2-4C3-6", (2, 8, 8), 4, "avg"),      # small CNN with pooling
            ("3C3-P2-4C3-6", (2, 8, 8), 4, "max")]


class _StaircaseWithF2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return torch.clamp(torch.floor(v / V_TH), 0, S_MAX)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * full_f2(v)


def pool_op(layer):
    return (F.avg_pool2d if layer.mode == "avg" else F.max_pool2d), layer.size


def step_forward(net, images, T, reset_detached=None):
    """Per-step forward. Records each block's input x[t], potential v[t] and spikes s[t];
    each pooling/flatten's input. With ``reset_detached`` set, spikes carry autograd."""
    u = {}
    rec = {i: {"x": [], "v": [], "s": []} for i in range(len(net.layers))}
    out = []
    for t in range(T):
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
            v = BETA * u.get(i, 0) + current
            if reset_detached is None:
                s = torch.clamp(torch.floor(v / V_TH), 0, S_MAX)
            else:
                s = _StaircaseWithF2.apply(v)
            u[i] = v - (s.detach() if reset_detached else s) * V_TH
            rec[i]["v"].append(v)
            rec[i]["s"].append(s)
            x = s
        out.append(x)
    return torch.stack(out), rec


def eq6_loss(out, target):
    return 0.5 * ((out - target) ** 2).sum()


def make(spec, shape, classes, pooling, grad_mode, T, seed=0):
    torch.manual_seed(seed)
    net = mtsnn.from_spec(spec, shape, classes, pooling=pooling, grad_mode=grad_mode, num_steps=T,
                          init="kaiming").double()  # fires in these tiny layers
    images = torch.randn(8, *shape, dtype=torch.float64) * 3
    target = torch.rand(T, 8, classes, dtype=torch.float64) * 3
    return net, images, target


def paper_reference_grads(net, images, target, T):
    """Eqs. (7)-(13), one time step at a time, with the per-weight trace e[t] of eq. (12)."""
    with torch.no_grad():
        out, rec = step_forward(net, images, T)
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
            f = full_f2(rec[i]["v"][t])
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
            e_w = (BETA * traces.get((i, "w"), 0) + inputs) / (1 + f_flat * V_TH)
            e_b = (BETA * traces.get((i, "b"), 0) + 1) / (1 + f * V_TH)
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
        if isinstance(layer, (SpikingLinear, SpikingConv2d)):
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
            v = BETA * u + x[t] @ block.weight.T + block.bias
            u = v - torch.clamp(torch.floor(v / V_TH), 0, S_MAX) * V_TH
            expected.append((full_f2(v) * grad_s[t]) @ block.weight)
    torch.testing.assert_close(gx, torch.stack(expected))
