"""A try that lost: the forward also writes the potentials v [T, M] and the backward reads them
(one reverse loop, no recomputed forward, no intermediates), against the library's
recompute-from-the-current backward, bptt-detach with f2, interleaved with ReLU. Same memory
kept for the backward (v instead of the current). Run from the repository root, machine idle:

    python benchmarks/t32-repeats/try_saved_potentials.py 32    # then 2
"""

import sys

import torch

sys.path.insert(0, "benchmarks")
from bench_neuron import interleaved  # noqa: E402

from mtsnn.experiments.tuning import tune_process  # noqa: E402
from mtsnn.neuron import LIFParams, _unroll, bptt_backward, fused, lif_forward  # noqa: E402

tune_process()
p = LIFParams(grad_mode="bptt-detach")


def forward_keeping_potentials(current, p):
    spikes, potentials = _unroll(current, p, None)
    return torch.stack(spikes), torch.stack(potentials)


def backward_from_potentials(grad_spikes, v, p):
    grads, g_u = [], torch.zeros_like(v[0])
    for t in reversed(range(v.shape[0])):
        g_v = p.surrogate_fn(v[t]) * grad_spikes[t] + g_u
        grads.append(g_v)
        g_u = p.decay * g_v
    return torch.stack(grads[::-1])


fw, bw = fused(lif_forward), fused(bptt_backward)
fwv, bwv = torch.compile(forward_keeping_potentials), torch.compile(backward_from_potentials)


def recompute(x, g):
    fw(x, p, None)
    return bw(g, x, p, None)


def saved(x, g):
    _, v = fwv(x, p)
    return bwv(g, v, p)


def relu(x, g):
    x = x.detach().requires_grad_(True)
    torch.relu(x).backward(g)
    return x.grad


T = int(sys.argv[1])
x = torch.randn(T, (16 if T == 32 else 128) * 65536) * 15
g = torch.randn_like(x)
assert torch.equal(recompute(x, g), saved(x, g))
for _ in range(2):
    r = interleaved({"relu": relu, "recompute (library)": recompute, "saved v": saved}, (x, g), 7)
    print(T, " ".join(f"{k}={v:.4f} ({v / r['relu']:.2f}x)" for k, v in r.items()), flush=True)
