"""Batch-1 latency of step-by-step inference: microseconds per time step of each preset's SNN,
float (``SpikingNetwork.step``) and integer-only (``IntegerNetwork.step``), against one
forward pass of its ANN twin.

    python benchmarks/bench_latency.py [--repeats 200] [--threads 1]

One image at a time, as a streaming system sees its input; no autograd. The shipped weights
(``models/``) where they exist, a batch norm folded into its block's weights once, else the
preset's initialisation (latency hardly depends on the weights: every layer is computed
densely). Each figure is the median over ``--repeats`` calls after a warm-up, contestants
interleaved. Writes benchmarks/latency_results.json and
benchmarks/LATENCY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from mtsnn import data, zoo
from mtsnn.config import PRESETS, build_model
from mtsnn.integer import IntegerNetwork
from mtsnn.models import folded_parameters, from_spec

HERE = Path(__file__).parent
NAMES = ("mnist-mlp", "mnist-cnn", "fmnist-mlp", "fmnist-cnn")


def contestants(name: str) -> dict:
    """name -> a function of no arguments doing one step (or one ANN forward) at batch 1."""
    cfg = PRESETS[name]
    if name not in zoo.available():
        net = build_model(cfg).eval()
    else:
        net, trained = zoo.load(name)
        if trained.batch_norm:  # fold the norms into the weights once, as a deployment would, not at every step
            folded = build_model(trained.replace(batch_norm=False)).eval()
            folded.load_state_dict(folded_parameters(net))
            net = folded
    net = net.to(memory_format=torch.contiguous_format)
    ann = from_spec(cfg.spec, cfg.input_shape, 10, ann=True).eval()
    integer = IntegerNetwork(net, *data.NORMALISATION[cfg.dataset])
    pixels = torch.randint(0, 256, (1, *cfg.input_shape), dtype=torch.uint8)
    image = pixels.float() / 255
    float_state, int_state = [net.initial_state(1)], [integer.initial_state()]

    def float_step():
        _, float_state[0] = net.step(image, float_state[0])

    def int_step():
        _, int_state[0] = integer.step(pixels, int_state[0])

    return {"SNN step, float": float_step, "SNN step, int8": int_step, "ANN twin forward": lambda: ann(image)}


def measure(functions: dict, repeats: int) -> dict:
    times = {name: [] for name in functions}
    with torch.no_grad():
        for function in functions.values():  # warm-up
            for _ in range(20):
                function()
        for _ in range(repeats):
            for name, function in functions.items():
                t0 = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - t0)
    return {name: 1e6 * statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "load_average": os.getloadavg()[0],
        "shipped_weights": [n for n in NAMES if n in zoo.available()],
        "us": {},
    }
    for name in NAMES:
        results["us"][name] = measure(contestants(name), args.repeats)
        print(name, {k: round(v, 1) for k, v in results["us"][name].items()})
    (HERE / "latency_results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Batch-1 latency, step by step",
        "",
        f"Regenerate with `python benchmarks/bench_latency.py` ({args.threads} thread(s), median of "
        f"{args.repeats} interleaved calls after a warm-up; torch {torch.__version__}). Microseconds per "
        "time step of the SNN (a whole inference is T = 2 steps) against one forward pass of the ANN "
        "twin; one image at a time, no autograd. The integer-only path computes its int32 sums "
        "exactly in float64 (`mtsnn.integer`): its time is that of an emulation, not of integer hardware. "
        f"Load average when it started: {results['load_average']:.1f} on {os.cpu_count()} cores "
        "(above 0 means other jobs shared the machine).",
        "",
        "| preset | SNN step, float (us) | SNN step, int8 (us) | ANN twin forward (us) | "
        "SNN inference T=2, float / ANN |",
        "|---|---|---|---|---|",
    ]
    for name, us in results["us"].items():
        lines.append(
            f"| {name} | {us['SNN step, float']:.0f} | {us['SNN step, int8']:.0f} | "
            f"{us['ANN twin forward']:.0f} | {2 * us['SNN step, float'] / us['ANN twin forward']:.2f} |"
        )
    (HERE / "LATENCY.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
