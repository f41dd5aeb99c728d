"""Batch normalisation of each hidden block's input current while training mnist-cnn's SNN
(issue 16, round 49), folded into the block's weight and bias for inference. A probe: if it
leads on the 5,000 held-out images it goes into the library; until then it lives here.

While training, hidden block l's current I = W x + b is normalised per channel over the
batch (and time, and space), I' = gamma (I - mu_B) / sigma_B + beta, before the neuron, with
gamma starting at V_th: "threshold-dependent" BN (Zheng et al. 2021) with its alpha = 1, so
the current starts with a spread of one threshold (with gamma = 1 no neuron reached V_th = 10
and every output was silent). In eval mode
the running statistics make I' an affine map of I per channel, which folds exactly into the
block: W' = W s, b' = (b - mu) s + beta with s = gamma / sqrt(var + eps), so the network
evaluated (and the one a user would keep) is the spec network, 15C5-P2-40C5-P2-300.

The paper's gradient (eqs. 7-13) sends two cotangents of the current down: delta (for the
input's gradient) and a (for the weight's). BN's backward is linear in the cotangent, so
each goes through it; gamma and beta are weights, so they take a.

Usage (from the repository root): as `mtsnn train`, with the network's hidden blocks
normalised:

    ./run python results/probes/recipe/bn/snn_bn.py train mnist-cnn --recipe fast ...
    ./run python results/probes/recipe/bn/snn_bn.py --selftest   # gradients against autograd
"""

import sys

import torch
from torch import nn

import mtsnn.experiments.train as train
from mtsnn.layers import SpikingBlock, _PaperBlockFunction
from mtsnn.neuron import Rows, _LIFFunction, fused, lif_forward, paper_backward

MOMENTUM, EPS = 0.1, 1e-5


class _PaperNormBlockFunction(torch.autograd.Function):
    # torch's own batch-norm kernels (aten.native_batch_norm and its backward, as nn.BatchNorm
    # calls them): written out in elementwise ops, the probe's step took 2.2 times as long
    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, block, num_steps):
        static = num_steps is not None
        x_flat = x if static else x.flatten(0, 1)
        current = block.synapse(x_flat, weight, bias)  # [N, C, ...]
        norm = block.norm
        normed, mean, invstd = torch.ops.aten.native_batch_norm(
            current, gamma, beta, norm.running_mean, norm.running_var, True, MOMENTUM, EPS
        )
        norm.num_batches_tracked += 1
        if not static:
            normed = normed.unflatten(0, x.shape[:2])
        rows = Rows(normed, num_steps)
        flat = rows.current(normed)
        ctx.save_for_backward(x, weight, gamma, flat, current, mean, invstd)
        ctx.block, ctx.num_steps, ctx.has_bias, ctx.rows = block, num_steps, bias is not None, rows
        return rows.spikes(fused(lif_forward)(flat, block.params, num_steps))

    @staticmethod
    def backward(ctx, grad_spikes):
        x, weight, gamma, flat, current, mean, invstd = ctx.saved_tensors
        rows, block = ctx.rows, ctx.block
        delta, a = (
            rows.like_current(g)
            for g in fused(paper_backward)(rows.time_major(grad_spikes), flat, block.params, ctx.num_steps)
        )
        static = ctx.num_steps is not None
        if not static:
            delta, a = delta.flatten(0, 1), a.flatten(0, 1)

        def through_norm(g, mask):
            return torch.ops.aten.native_batch_norm_backward(
                g.contiguous(memory_format=_layout(current)), current, gamma, None, None, mean, invstd, True, EPS, mask
            )

        x_flat = x if static else x.flatten(0, 1)
        grad_x = None
        if ctx.needs_input_grad[0]:
            (delta_in, _, _) = through_norm(delta, [True, False, False])
            grad_x = block.synapse.input_grad(delta_in, weight, x_flat.shape).reshape(x.shape)
        a_in, grad_gamma, grad_beta = through_norm(a, [True, True, True])
        grad_w, grad_b = block.synapse.weight_and_bias_grad(a_in, x_flat, weight, ctx.has_bias)
        return grad_x, grad_w, grad_b, grad_gamma, grad_beta, None, None


def _layout(t):
    channels_last = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def folded(block):
    """(W', b'): the block's weight and bias with its norm's running statistics folded in."""
    norm = block.norm
    scale = norm.weight * torch.rsqrt(norm.running_var + EPS)
    weight = block.weight * scale.view([-1] + [1] * (block.weight.dim() - 1))
    bias = block.bias if block.bias is not None else torch.zeros_like(scale)
    return weight, (bias - norm.running_mean) * scale + norm.bias


plain_forward = SpikingBlock.forward


def forward(self, x, num_steps=None):
    if getattr(self, "norm", None) is None:
        return plain_forward(self, x, num_steps)
    assert self.params.grad_mode == "paper", "the probe normalises the paper's gradient mode only"
    self._check_input(x, num_steps)
    if self.training:
        return _PaperNormBlockFunction.apply(
            x, self.weight, self.bias, self.norm.weight, self.norm.bias, self, num_steps
        )
    weight, bias = folded(self)
    return _PaperBlockFunction.apply(x, weight, bias, self.synapse, self.params, num_steps)


plain_build = train.build_model


def build_model(cfg):
    model = plain_build(cfg)
    for block in model.blocks()[:-1]:  # hidden blocks; the output layer's counts stay unnormalised
        block.norm = nn.BatchNorm1d(block.weight.shape[0], eps=EPS, momentum=MOMENTUM)
        nn.init.constant_(block.norm.weight, block.params.v_th)
    return model


def selftest():
    """The probe's gradients against autograd through torch's batch norm, with the paper's two
    cotangents injected at the normalised current; and the folded eval forward against torch's
    BatchNorm in eval mode."""
    from mtsnn.layers import SpikingConv2d, SpikingLinear

    torch.manual_seed(0)
    for block, x, steps in [
        (SpikingConv2d(3, 5, 3), torch.rand(6, 3, 7, 7) * 4, 2),
        (  # channels-last, as mtsnn trains: a spike sequence
            SpikingConv2d(3, 5, 3).to(memory_format=torch.channels_last),
            (torch.rand(2, 6, 7, 7, 3) < 0.5).float().permute(0, 1, 4, 2, 3) * 3,
            None,
        ),
        (SpikingLinear(20, 8), (torch.rand(2, 6, 20) < 0.5).float() * 3, None),
    ]:
        block.norm = nn.BatchNorm1d(block.weight.shape[0], eps=EPS, momentum=MOMENTUM)
        with torch.no_grad():
            block.norm.weight.uniform_(0.5, 2.0)
            block.norm.bias.uniform_(-1.0, 1.0)
        ref_norm = nn.BatchNorm1d(block.weight.shape[0], eps=EPS, momentum=MOMENTUM)
        ref_norm.load_state_dict(block.norm.state_dict())
        x = x.requires_grad_()
        out = forward(block.train(), x, steps)
        grad_out = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, block.weight, block.bias, block.norm.weight, block.norm.bias), grad_out)
        # reference: autograd through the synapse and torch's BN; the neuron's two cotangents from paper_backward
        static = steps is not None
        x_flat = x if static else x.flatten(0, 1)
        current = block.synapse(x_flat, block.weight, block.bias)
        normed = ref_norm.train()(current.flatten(2) if current.dim() > 2 else current).view_as(current)
        shaped = normed if static else normed.unflatten(0, x.shape[:2])
        rows = Rows(shaped.detach(), steps)
        delta, a = (
            rows.like_current(g)
            for g in paper_backward(rows.time_major(grad_out), rows.current(shaped.detach()), block.params, steps)
        )
        (gx,) = torch.autograd.grad(shaped, (x,), delta, retain_graph=True)
        gw, gb, gg, gbeta = torch.autograd.grad(shaped, (block.weight, block.bias, ref_norm.weight, ref_norm.bias), a)
        for name, g, r in zip(["x", "weight", "bias", "gamma", "beta"], got, (gx, gw, gb, gg, gbeta)):
            assert torch.allclose(g, r, atol=1e-4, rtol=1e-4), (name, (g - r).abs().max())
        for name in ("running_mean", "running_var"):
            assert torch.allclose(getattr(block.norm, name), getattr(ref_norm, name), atol=1e-5), name
        with torch.no_grad():
            got_eval = forward(block.eval(), x, steps)
            c = block.synapse(x_flat, block.weight, block.bias)
            n = ref_norm.eval()(c.flatten(2) if c.dim() > 2 else c).view_as(c)
            n = n if static else n.unflatten(0, x.shape[:2])
            # eval reference: the neuron on torch's normalised current
            want = _LIFFunction.apply(n.contiguous(), block.params, steps)
            assert (got_eval != want).float().mean() < 0.01, "eval forward: folded counts differ"
            print(type(block).__name__, "eval: differing counts", int((got_eval != want).sum()), "of", want.numel())
    print("selftest passed")


SpikingBlock.forward = forward
train.build_model = build_model

if __name__ == "__main__":
    if sys.argv[1:] == ["--selftest"]:
        selftest()
        sys.exit(0)
    from mtsnn.experiments.cli import main

    sys.exit(main(sys.argv[1:]))
