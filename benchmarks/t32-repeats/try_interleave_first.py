"""The first version of try_interleave.py (same comparison, without the multiplying forward).
It pauses the training process TRAINER_PID (SIGSTOP) while it times, and resumes it after:

    python benchmarks/t32-repeats/try_interleave_first.py 1,2 TRAINER_PID
"""

import os
import signal
import sys
import time
from functools import partial

import torch

from mtsnn.experiments.tuning import tune_process
from mtsnn.neuron import LIFParams, bptt_backward, lif_forward

tune_process()
KS = [int(a) for a in sys.argv[1].split(",")]
TRAINER = int(sys.argv[2])
p = LIFParams(grad_mode="bptt-detach")


def fwd_k(k):
    def f(x):
        T, M = x.shape
        parts = x.view(T, k, M // k).unbind(1)
        outs = [lif_forward(part, p) for part in parts]
        return torch.stack(outs, 1).view(T, M)

    return f


def bwd_k(k):
    def f(g, x):
        T, M = x.shape
        gp = g.view(T, k, M // k).unbind(1)
        xp = x.view(T, k, M // k).unbind(1)
        return torch.stack([bptt_backward(a, b, p) for a, b in zip(gp, xp)], 1).view(T, M)

    return f


def relu(x, g):
    x = x.detach().requires_grad_(True)
    torch.relu(x).backward(g)
    return x.grad


def _time(cands, calls, x, M):
    best = {n: float("inf") for n in cands}
    for _ in range(4):
        for n, f in cands.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            best[n] = min(best[n], (time.perf_counter() - t0) / calls)
    for n, b in best.items():
        print(f"M={M:8d} {n:10s} {b * 1e9 / x.numel():.3f} ns/element", flush=True)


for M, calls in ((65536, 40), (16 * 65536, 4)):
    x = torch.randn(32, M) * 15
    g = torch.randn_like(x)
    cands = {"relu": partial(relu, x, g)}
    for k in KS:
        F, B = torch.compile(fwd_k(k)), torch.compile(bwd_k(k))
        assert torch.equal(F(x), lif_forward(x, p)), k
        assert torch.allclose(B(g, x), bptt_backward(g, x, p), rtol=1e-5, atol=1e-6), k
        cands[f"fwd k={k}"] = partial(F, x)
        cands[f"bwd k={k}"] = partial(B, g, x)
    for f in cands.values():
        f()
    print("compiled", M, flush=True)
    os.kill(TRAINER, signal.SIGSTOP)
    try:
        _time(cands, calls, x, M)
    finally:
        os.kill(TRAINER, signal.SIGCONT)
