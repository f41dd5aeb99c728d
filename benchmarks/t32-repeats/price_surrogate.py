"""What f2 costs inside the fused backward at T = 32 (bptt-detach), in cache (M = 65536):
the library's backward against the same backward with f2's two exponentials written out
here, with its exponentials replaced by a cheap polynomial, with only the nearest term, and
with the surrogate replaced by 1. The replacements are pricing only, not gradients anyone
should use. Best of 5 rounds; run from the repository root, machine idle:

    python benchmarks/t32-repeats/price_surrogate.py > benchmarks/t32-repeats/price_surrogate.txt
"""

import math
import time

import torch

from mtsnn import surrogate
from mtsnn.experiments.tuning import tune_process
from mtsnn.neuron import LIFParams, bptt_backward, spike_count

tune_process()
p = LIFParams(grad_mode="bptt-detach")
RHO, K = p.v_th**2 / p.alpha_w, 2  # Table 1: rho = 5 and a window of 2 each side
REACH = surrogate._reach(RHO, torch.float32)


def backward_with(curve):
    def run(g, current):
        u, potentials = torch.zeros_like(current[0]), []
        for t in range(current.shape[0]):
            v = p.decay * u + current[t]
            u = v - spike_count(v, p.v_th, p.s_max) * p.v_th
            potentials.append(v)
        grads, g_u = [], torch.zeros_like(current[0])
        for t in reversed(range(len(potentials))):
            g_v = curve(potentials[t]) * g[t] + g_u
            grads.append(g_v)
            g_u = p.decay * g_v
        return torch.stack(grads[::-1])

    return run


def f2_window(exp):
    """f2 / alpha_h as the library computes it (nearest term times a window factor), with
    ``exp`` for its two exponentials."""

    def curve(v):
        x = v / p.v_th
        c = torch.clamp(torch.round(x), 1, p.s_max)
        d = torch.clamp(x - c, -REACH, REACH)
        r = exp(d * (2 * RHO))
        r_inv = 1 / r
        factor, up, down = 1.0, 1.0, 1.0
        for j in range(1, K + 1):
            up, down = up * r, down * r_inv
            inside = torch.where(c <= p.s_max - j, up, 0.0) + torch.where(c >= 1 + j, down, 0.0)
            factor = factor + math.exp(-RHO * j * j) * inside
        return exp(d * d * -RHO) * factor

    return curve


def nearest_term(v):
    x = v / p.v_th
    d = torch.clamp(x - torch.clamp(torch.round(x), 1, p.s_max), -REACH, REACH)
    return torch.exp(d * d * -RHO)


contestants = {
    "library": lambda g, x: bptt_backward(g, x, p),
    "f2 written out": backward_with(f2_window(torch.exp)),
    "f2, exp -> 1 + y^2": backward_with(f2_window(lambda y: 1 + y * y)),
    "nearest term only": backward_with(nearest_term),
    "surrogate = 1": backward_with(torch.ones_like),
}
x = torch.randn(32, 65536) * 15
g = torch.randn_like(x)
compiled = {name: torch.compile(fn) for name, fn in contestants.items()}
assert torch.allclose(compiled["f2 written out"](g, x), bptt_backward(g, x, p), rtol=1e-4, atol=1e-6)
for fn in compiled.values():
    fn(g, x)
best = dict.fromkeys(compiled, float("inf"))
for _ in range(5):
    for name, fn in compiled.items():
        start = time.perf_counter()
        for _ in range(40):
            fn(g, x)
        best[name] = min(best[name], (time.perf_counter() - start) / 40)
for name, seconds in best.items():
    print(f"{name:20s} {seconds * 1e9 / x.numel():.3f} ns/element", flush=True)
