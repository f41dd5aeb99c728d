"""What the parts of the neuron's bptt-detach backward cost at T=32 (B=16, N=65536), against
ReLU's forward + backward: the backward as it is, with the second exponential of f2 replaced
by a polynomial (a wrong curve, only to price that exponential), and with f3 (no exponential).
Median of 7 interleaved runs; one variant per process, so each compiles its own kernel:

    for v in f2 one-exp f3; do python benchmarks/second-machine/price_parts.py $v; done
"""

import math
import sys
from pathlib import Path

import torch

import mtsnn.surrogate as surrogate
from mtsnn.experiments.tuning import tune_process
from mtsnn.neuron import LIFParams, bptt_backward, lif_forward

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_neuron import interleaved  # noqa: E402


def one_exponential(x, s_max, rho, k):  # _f2_window with r = exp(2 rho d) replaced by 1 + d
    c = torch.clamp(torch.round(x), 1, s_max)
    d = x - c
    factor, up, down = 1.0, 1.0, 1.0
    for j in range(1, k + 1):
        up, down = up * (1 + d), down * (1 - d)
        factor = factor + math.exp(-rho * j * j) * (
            torch.where(c <= s_max - j, up, 0.0) + torch.where(c >= 1 + j, down, 0.0)
        )
    return surrogate._exp_or_zero(d * d * -rho) * factor


variant = sys.argv[1] if len(sys.argv) > 1 else "f2"
if variant == "one-exp":
    surrogate._f2_window = one_exponential
p = LIFParams(surrogate="f3" if variant == "f3" else "f2")
tune_process()
x = torch.randn(32, 16, 65536) * 15
g = torch.randn_like(x)
xf, gf = x.reshape(32, -1), g.reshape(32, -1)
forward, backward = torch.compile(lif_forward), torch.compile(bptt_backward)


def relu():
    xi = x.detach().requires_grad_()
    torch.relu(xi).backward(g)


contestants = {"relu fwd+bwd": relu, "neuron fwd": lambda: forward(xf, p), "neuron bwd": lambda: backward(gf, xf, p)}
median = interleaved(contestants, (), 7)
print(variant, "  ".join(f"{name} {seconds:.4f} s" for name, seconds in median.items()))
