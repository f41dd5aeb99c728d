"""Speed of the multi-threshold neuron and of training steps, beside sinabs, SpikingJelly and snnTorch.

    pip install -e .[bench]   # then check torch: spikingjelly pulls the newest torchvision, which
                              # may upgrade torch (pip install torch==YOURS; pip uninstall torchvision)
    python benchmarks/bench_neuron.py [--quick] [--presets mnist-mlp,fmnist-mlp,mnist-cnn,fmnist-cnn]
    python benchmarks/bench_neuron.py --device cuda --neuron-only --out DIR   # on a GPU (gpu_cifar10.sh)
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/bench_neuron.py --neuron-only --out benchmarks/hugepages

Contestants run interleaved (A B C A B C ...) in one process; each figure is the median
of --repeats runs after a warm-up. Workloads:
  1. the neuron alone, forward + backward, on currents [T=2, B=128, 65536] and [T=32, B=16, 65536]
  2. Linear(784, 4096) + neuron on [T=2, B=128, 784]
  3. one training step (forward, eq. 6 loss, backward, Adam) of each preset at T=2 and of its ANN twin
  4. training and evaluation images per second of each preset (from 3, and a batch-1000 forward)
  5. memory: bytes saved for the backward of a training step (torch.autograd saved-tensor hooks)
  6. batch norm's cost: a training step of each convolutional preset (and of its ANN twin)
     with and without --batch-norm
Writes benchmarks/neuron_results.json and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from mtsnn.config import build_model, preset
from mtsnn.experiments.objective import loss_fn
from mtsnn.experiments.optimizer import make_optimizer
from mtsnn.experiments.tuning import tune_process
from mtsnn.neuron import LIFParams, bptt_backward, fused, lif_forward, neuron_backend, paper_backward

HERE = Path(__file__).parent


class _PlainF2Spike(torch.autograd.Function):
    """The staircase with f2 written out term by term (all s_max Gaussians), as a user would."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return torch.clamp(torch.floor(v / 10.0), 0, 15)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * sum(torch.exp(-((v - 10.0 * i) ** 2) / 20.0) for i in range(1, 16))


def plain_f2_neuron(x):
    u, out = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        v = 0.9 * u + x[t]
        s = _PlainF2Spike.apply(v)
        u = v - s.detach() * 10.0
        out.append(s)
    return torch.stack(out)


def peers(device: torch.device | None = None) -> dict:
    """Neuron functions of the installed peer libraries: ``[T, B, N] -> [T, B, N]``. On a GPU,
    SpikingJelly runs its cupy backend where cupy is installed."""
    device = device or torch.device("cpu")
    found = {}
    try:
        import sinabs.activation
        import sinabs.layers

        lif = sinabs.layers.LIF(
            tau_mem=10.0, spike_threshold=torch.tensor(10.0), norm_input=False, spike_fn=sinabs.activation.MaxSpike(15)
        ).to(device)

        def sinabs_maxspike(x):
            lif.reset_states()
            return lif(x.transpose(0, 1)).transpose(0, 1)  # sinabs is batch-first

        found["sinabs LIF MaxSpike(15)"] = sinabs_maxspike
    except ImportError:
        pass
    try:
        from spikingjelly.activation_based import functional, neuron

        backend = "cupy" if device.type == "cuda" and importlib.util.find_spec("cupy") else "torch"
        node = neuron.LIFNode(
            tau=10.0,
            v_threshold=10.0,
            v_reset=None,
            decay_input=False,
            detach_reset=True,
            step_mode="m",
            backend=backend,
        )

        def spikingjelly_lif(x):
            functional.reset_net(node)
            return node(x)

        found[f"SpikingJelly LIFNode ({backend})"] = spikingjelly_lif
    except ImportError:
        pass
    try:
        import snntorch

        leaky = snntorch.Leaky(beta=0.9, threshold=10.0, reset_mechanism="subtract")

        def snntorch_leaky(x):
            mem, out = leaky.init_leaky(), []
            for t in range(x.shape[0]):
                spk, mem = leaky(x[t], mem)
                out.append(spk)
            return torch.stack(out)

        found["snnTorch Leaky"] = snntorch_leaky
    except ImportError:
        pass
    return found


def neuron_contestants(device: torch.device) -> dict:
    """Each takes (currents, grad) and runs forward + backward of the neuron."""
    paper, detach = LIFParams(grad_mode="paper"), LIFParams(grad_mode="bptt-detach")

    def ours(forward, backward, p):
        def run(x, g):  # as the autograd function does: forward keeps only the current
            forward(x, p)
            return backward(g, x, p)

        return run

    def autograd(fn):
        def run(x, g):
            x = x.detach().requires_grad_(True)
            fn(x).backward(g)
            return x.grad

        return run

    contestants = {
        "torch.relu (floor)": autograd(torch.relu),
        f"mtsnn paper ({neuron_backend()})": ours(fused(lif_forward), fused(paper_backward), paper),
        f"mtsnn bptt-detach ({neuron_backend()})": ours(fused(lif_forward), fused(bptt_backward), detach),
        "mtsnn paper (eager)": ours(lif_forward, paper_backward, paper),
        "plain PyTorch, f2 with 15 terms": autograd(plain_f2_neuron),
    }
    contestants.update({name: autograd(fn) for name, fn in peers(device).items()})
    return contestants


def interleaved(contestants: dict, args: tuple, repeats: int) -> dict:
    """Median seconds per call of each contestant, run A B C A B C ... after one warm-up each
    (on a GPU, synchronised before and after each call)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for fn in contestants.values():
        fn(*args)
    times = {name: [] for name in contestants}
    for _ in range(repeats):
        for name, fn in contestants.items():
            sync()
            start = time.perf_counter()
            fn(*args)
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def train_step(cfg, images, labels):
    model = build_model(cfg)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))

    def step():
        loss = loss_fn(model(images), labels, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def evaluate(x):
        with torch.no_grad():
            model(x)

    return step, evaluate, model


def saved_bytes(step, model) -> int:
    """Bytes of the activations autograd keeps for the backward of one step: distinct
    storages, the parameters (kept anyway) left out."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def machine(device: torch.device) -> dict:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "neuron_backend": neuron_backend(),
        # PyTorch's CPU allocator asks for transparent huge pages for blocks of 2 MiB and more
        "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smaller tensors, for a smoke test")
    parser.add_argument("--presets", default="mnist-mlp,fmnist-mlp,mnist-cnn,fmnist-cnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--neuron-only", action="store_true", help="only workload 1, the neuron alone")
    parser.add_argument("--out", default=str(HERE), help="where the results go (default: benchmarks/)")
    args = parser.parse_args()
    device, out = torch.device(args.device), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tune_process()  # as training from the command line does
    torch.manual_seed(0)
    width = 4096 if args.quick else 65536
    results = {
        "machine": machine(device),
        "repeats": args.repeats,
        "neuron": {},
        "presets": {},
        "linear_784_4096": {},
        "batch_norm": {},
    }

    for steps, batch in ((2, 128), (32, 16)):
        x = torch.randn(steps, batch, width, device=device) * 15
        g = torch.randn_like(x)
        key = f"T={steps}, B={batch}, N={width}"
        results["neuron"][key] = interleaved(neuron_contestants(device), (x, g), args.repeats)
        print(key, json.dumps(results["neuron"][key], indent=1))
    if args.neuron_only:
        (out / "neuron_results.json").write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, out)
        return

    x = torch.rand(2, 128, 784) * 3
    linear_contestants = {}
    from mtsnn.layers import SpikingLinear

    for mode in ("paper", "bptt-detach"):
        block = SpikingLinear(784, 4096, grad_mode=mode)
        linear_contestants[f"mtsnn SpikingLinear {mode}"] = (lambda b: lambda: b(x).sum().backward())(block)
    linear = torch.nn.Linear(784, 4096)
    for name, fn in peers().items():
        linear_contestants[f"Linear + {name}"] = (lambda f: lambda: f(linear(x)).sum().backward())(fn)
    linear_contestants["Linear + ReLU"] = lambda: torch.relu(linear(x)).sum().backward()
    results["linear_784_4096"] = interleaved(linear_contestants, (), args.repeats)
    print("Linear(784, 4096) + neuron", json.dumps(results["linear_784_4096"], indent=1))

    for name in args.presets.split(","):
        cfg = preset(name)
        images = torch.randn(128, *cfg.input_shape)
        labels = torch.randint(0, 10, (128,))
        snn_step, snn_eval, snn_model = train_step(cfg, images, labels)
        ann_step, ann_eval, ann_model = train_step(cfg.replace(ann=True), images, labels)
        times = interleaved({"snn": snn_step, "ann": ann_step}, (), args.repeats)
        big = torch.randn(1000, *cfg.input_shape)
        evals = interleaved(
            {"snn": partial(snn_eval, big), "ann": partial(ann_eval, big)}, (), max(3, args.repeats // 2)
        )
        results["presets"][name] = {
            "snn_step_s": times["snn"],
            "ann_step_s": times["ann"],
            "ratio": times["snn"] / times["ann"],
            "snn_train_images_per_s": 128 / times["snn"],
            "ann_train_images_per_s": 128 / times["ann"],
            "snn_eval_images_per_s": 1000 / evals["snn"],
            "ann_eval_images_per_s": 1000 / evals["ann"],
            "snn_saved_bytes": saved_bytes(snn_step, snn_model),
            "ann_saved_bytes": saved_bytes(ann_step, ann_model),
        }
        print(name, json.dumps(results["presets"][name], indent=1))
        if "C" in cfg.spec:  # a convolutional preset: batch norm's cost
            steps = {
                "snn": snn_step,
                "snn batch norm": train_step(cfg.replace(batch_norm=True), images, labels)[0],
                "ann": ann_step,
                "ann batch norm": train_step(cfg.replace(ann=True, batch_norm=True), images, labels)[0],
            }
            results["batch_norm"][name] = interleaved(steps, (), args.repeats)
            print(name, "batch norm", json.dumps(results["batch_norm"][name], indent=1))

    (out / "neuron_results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out)


def write_markdown(r: dict, out: Path) -> None:
    m = r["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {m['cpu']}{', ' + m['gpu'] if m.get('gpu') else ''}, {m['cores']} cores, "
        f"torch {m['torch']} ({m['torch_threads']} threads), "
        f"mtsnn neuron backend: {m['neuron_backend']}"
        f"{', huge pages (THP_MEM_ALLOC_ENABLE=1)' if m.get('huge_pages') else ''}. "
        f"Median of {r['repeats']} interleaved runs after a warm-up. "
        "Regenerate with `python benchmarks/bench_neuron.py` (peers: `pip install -e .[bench]`). "
        "Compare figures within one run: on a shared machine absolute times drift between runs.",
        "",
    ]
    for key, times in r["neuron"].items():
        relu = times["torch.relu (floor)"]
        peer_times = [t for n, t in times.items() if n.startswith(("sinabs", "SpikingJelly", "snnTorch"))]
        fastest_peer = min(peer_times) if peer_times else None
        lines += [
            f"## 1. Neuron alone, forward + backward, {key}",
            "",
            "| contestant | seconds | x ReLU | speed-up over fastest peer |",
            "|---|---|---|---|",
        ]
        for name, t in sorted(times.items(), key=lambda kv: kv[1]):
            vs_peer = f"{fastest_peer / t:.2f}" if fastest_peer else "-"
            lines.append(f"| {name} | {t:.4f} | {t / relu:.2f} | {vs_peer} |")
        lines.append("")
    if not r["presets"]:
        (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
        return
    lines += ["## 2. Linear(784, 4096) + neuron, T=2, B=128", "", "| contestant | seconds |", "|---|---|"]
    lines += [f"| {n} | {t:.4f} |" for n, t in sorted(r["linear_784_4096"].items(), key=lambda kv: kv[1])]
    lines += [
        "",
        "## 3-5. Presets at T=2: training step against the ANN twin, throughput, memory",
        "",
        "| preset | SNN step s | ANN step s | SNN / ANN | train img/s SNN / ANN | eval img/s SNN / ANN "
        "| saved for backward SNN / ANN (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in r["presets"].items():
        lines.append(
            f"| {name} | {p['snn_step_s']:.4f} | {p['ann_step_s']:.4f} | {p['ratio']:.2f} | "
            f"{p['snn_train_images_per_s']:.0f} / {p['ann_train_images_per_s']:.0f} | "
            f"{p['snn_eval_images_per_s']:.0f} / {p['ann_eval_images_per_s']:.0f} | "
            f"{p['snn_saved_bytes'] / 1e6:.1f} / {p['ann_saved_bytes'] / 1e6:.1f} |"
        )
    if r.get("batch_norm"):
        lines += [
            "",
            "## 6. Batch norm's cost: training step at T=2, B=128, with and without `--batch-norm`",
            "",
            "| preset | SNN step s without / with | with / without | ANN step s without / with | with / without |",
            "|---|---|---|---|---|",
        ]
        for name, t in r["batch_norm"].items():
            lines.append(
                f"| {name} | {t['snn']:.4f} / {t['snn batch norm']:.4f} | {t['snn batch norm'] / t['snn']:.2f} | "
                f"{t['ann']:.4f} / {t['ann batch norm']:.4f} | {t['ann batch norm'] / t['ann']:.2f} |"
            )
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
