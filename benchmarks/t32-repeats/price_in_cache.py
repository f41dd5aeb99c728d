"""The fused neuron's arithmetic alone: nanoseconds per element of forward, backward
(bptt-detach, f2) and ReLU's forward + backward on [T=32, M] currents, with M large (memory
traffic included) and small (the tensors stay in cache, so what is left is arithmetic).
Best of 3 rounds. Run from the repository root with the training machine otherwise idle:

    python benchmarks/t32-repeats/price_in_cache.py > benchmarks/t32-repeats/price_in_cache.txt
"""

import time
from functools import partial

import torch

from mtsnn.experiments.tuning import tune_process
from mtsnn.neuron import LIFParams, bptt_backward, fused, lif_forward

tune_process()
p = LIFParams(grad_mode="bptt-detach")
forward, backward = fused(lif_forward), fused(bptt_backward)


def relu(x, g):
    x = x.detach().requires_grad_(True)
    torch.relu(x).backward(g)
    return x.grad


for M, calls in ((16 * 65536, 5), (8192, 400), (65536, 60)):
    x = torch.randn(32, M) * 15
    g = torch.randn_like(x)
    parts = {"relu": (relu, (x, g)), "fwd": (forward, (x, p, None)), "bwd": (backward, (g, x, p, None))}
    for name, (function, args) in parts.items():
        fn = partial(function, *args)
        fn()
        fn()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best = min(best, (time.perf_counter() - start) / calls)
        print(f"M={M:8d} {name:5s} {best * 1e9 / (32 * M):.3f} ns/element", flush=True)
