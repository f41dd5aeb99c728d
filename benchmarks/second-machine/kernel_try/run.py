"""A try at the T=32 goal: the neuron's forward and bptt-detach backward with f2 written by
hand in C++ (kernel.cpp: at::vec, each element's 32 potentials kept in registers and a stack
array, 2 vectors in flight in the backward and 4 in the forward, an inlined exponential),
against the inductor kernels and ReLU, on [T=32, B=16, 65536]. Not part of the library: it
did not beat inductor (results.txt).

    python benchmarks/second-machine/kernel_try/run.py      # needs g++ and ninja; AVX2 only
"""

import sys
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

from mtsnn.experiments.tuning import tune_process
from mtsnn.neuron import LIFParams, bptt_backward, lif_forward

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_neuron import interleaved  # noqa: E402

flags = ["-O3", "-march=native", "-fopenmp", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma"]
K = load(
    "mtsnn_kernel_try", [str(Path(__file__).with_name("kernel.cpp"))], extra_cflags=flags, extra_ldflags=["-fopenmp"]
)
tune_process()
p = LIFParams()
x = torch.randn(32, 16, 65536) * 15
g = torch.randn_like(x)
xf, gf = x.reshape(32, -1), g.reshape(32, -1)
args = (p.decay, p.v_th, p.s_max, p.alpha_h, p.alpha_w, p.surrogate_fn.window)
ref = bptt_backward(gf[:, :8192], xf[:, :8192], p)
mine = K.bptt_detach_backward(gf[:, :8192].contiguous(), xf[:, :8192].contiguous(), *args)
print("backward, largest error relative to the largest gradient:", ((ref - mine).abs().max() / ref.abs().max()).item())
forward_ok = torch.equal(
    lif_forward(xf[:, :8192], p), K.lif_forward(xf[:, :8192].contiguous(), p.decay, p.v_th, p.s_max)
)
print("forward identical:", forward_ok)
F, B = torch.compile(lif_forward), torch.compile(bptt_backward)


def relu():
    xi = x.detach().requires_grad_()
    torch.relu(xi).backward(g)


contestants = {
    "relu": relu,
    "inductor": lambda: (F(xf, p), B(gf, xf, p)),
    "hand-written": lambda: (K.lif_forward(xf, p.decay, p.v_th, p.s_max), K.bptt_detach_backward(gf, xf, *args)),
    "hand-written forward": lambda: K.lif_forward(xf, p.decay, p.v_th, p.s_max),
    "hand-written backward": lambda: K.bptt_detach_backward(gf, xf, *args),
}
median = interleaved(contestants, (), 7)
for name, seconds in median.items():
    print(f"{name:22s} {seconds:.4f} s  {seconds / median['relu']:.2f}x ReLU")
