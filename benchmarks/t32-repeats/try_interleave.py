"""A try that did not gain, and what it showed: the forward at T=32 waits on its own recurrence.

Each column's 32 steps are a chain (fma, divide, floor, clamp, fma), and inductor's loop
holds one 16-wide vector's whole chain, too long for the CPU to overlap two columns. Two
independent halves in one kernel ("k=2") would give it a second chain to overlap. Priced,
with ReLU's forward + backward, in cache (M = 65536) and out of it (M = 1048576), best of
4 rounds, against the forward with the divide replaced by a multiply (not the library's
arithmetic: it can floor differently next to a threshold; priced only, to show the chain's
cost). Run from the repository root, machine idle:

    python benchmarks/t32-repeats/try_interleave.py > benchmarks/t32-repeats/try_interleave.txt
"""

import time
from functools import partial

import torch

from mtsnn.experiments.tuning import tune_process
from mtsnn.neuron import LIFParams, bptt_backward, lif_forward

tune_process()
p = LIFParams(grad_mode="bptt-detach")


def forward_in(k):
    def run(x):
        steps, m = x.shape
        return torch.stack([lif_forward(part, p) for part in x.view(steps, k, m // k).unbind(1)], 1).view(steps, m)

    return run


def backward_in(k):
    def run(g, x):
        steps, m = x.shape
        halves = zip(g.view(steps, k, m // k).unbind(1), x.view(steps, k, m // k).unbind(1))
        return torch.stack([bptt_backward(a, b, p) for a, b in halves], 1).view(steps, m)

    return run


def forward_multiplying(x):
    u, out = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        v = p.decay * u + x[t]
        s = torch.clamp(torch.floor(v * (1 / p.v_th)), 0, p.s_max)
        u = v - s * p.v_th
        out.append(s)
    return torch.stack(out)


def relu(x, g):
    x = x.detach().requires_grad_(True)
    torch.relu(x).backward(g)
    return x.grad


for m, calls in ((65536, 40), (16 * 65536, 4)):
    x = torch.randn(32, m) * 15
    g = torch.randn_like(x)
    contestants = {"relu fwd+bwd": partial(relu, x, g)}
    for k in (1, 2):
        fw, bw = torch.compile(forward_in(k)), torch.compile(backward_in(k))
        assert torch.equal(fw(x), lif_forward(x, p))
        assert torch.allclose(bw(g, x), bptt_backward(g, x, p), rtol=1e-5, atol=1e-6)
        contestants[f"fwd k={k}"], contestants[f"bwd k={k}"] = partial(fw, x), partial(bw, g, x)
    contestants["fwd multiplying"] = partial(torch.compile(forward_multiplying), x)
    for fn in contestants.values():
        fn()
    best = dict.fromkeys(contestants, float("inf"))
    for _ in range(4):
        for name, fn in contestants.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls)
    for name, seconds in best.items():
        print(f"M={m:8d} {name:16s} {seconds * 1e9 / x.numel():.3f} ns/element", flush=True)
