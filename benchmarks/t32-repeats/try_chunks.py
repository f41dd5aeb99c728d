"""A try that did not gain: the compiled kernels called on column chunks of [T=32, M]
currents, so that inductor's [M] intermediates stay in cache, against one call on all
columns (bptt-detach, f2), interleaved with ReLU. Run from the repository root, machine idle:

    python benchmarks/t32-repeats/try_chunks.py > benchmarks/t32-repeats/try_chunks.txt
"""

import sys

import torch

sys.path.insert(0, "benchmarks")
from bench_neuron import interleaved  # noqa: E402

from mtsnn.experiments.tuning import tune_process  # noqa: E402
from mtsnn.neuron import LIFParams, bptt_backward, fused, lif_forward  # noqa: E402

tune_process()
p = LIFParams(grad_mode="bptt-detach")
fw, bw = fused(lif_forward), fused(bptt_backward)


def in_chunks(fn, columns):
    def run(*tensors):  # the [T, M] tensors first, then p and num_steps
        *rows, params, steps = tensors
        out = torch.empty_like(rows[-1])
        for a in range(0, out.shape[1], columns):
            out[:, a : a + columns] = fn(*(r[:, a : a + columns] for r in rows), params, steps)
        return out

    return run


def neuron(forward, backward):
    def run(x, g):
        forward(x, p, None)
        return backward(g, x, p, None)

    return run


def relu(x, g):
    x = x.detach().requires_grad_(True)
    torch.relu(x).backward(g)
    return x.grad


x = torch.randn(32, 16 * 65536) * 10 + 5
g = torch.randn_like(x)
contestants = {
    "relu": relu,
    "one call": neuron(fw, bw),
    "bwd chunks 16384": neuron(fw, in_chunks(bw, 16384)),
    "bwd chunks 32768": neuron(fw, in_chunks(bw, 32768)),
    "fwd+bwd chunks 16384": neuron(in_chunks(fw, 16384), in_chunks(bw, 16384)),
}
for _ in range(2):
    r = interleaved(contestants, (x, g), 7)
    print(" ".join(f"{k}={v:.4f} ({v / r['relu']:.2f}x)" for k, v in r.items()), flush=True)
