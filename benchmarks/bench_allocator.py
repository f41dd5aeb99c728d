"""Training steps with glibc's default allocator settings against mtsnn.experiments.tuning.keep_freed_memory.

    python benchmarks/bench_allocator.py [--rounds 5] [--steps 15] [--presets mnist-cnn,fmnist-cnn]

The setting is process-wide, so each measurement is a fresh process: for every preset and
variant (SNN at T=2, ANN twin), processes alternate default / kept (A B A B ...) for
--rounds rounds. A process takes 3 warm-up steps, then times --steps training steps
(forward, eq. 6 loss, backward, Adam) on a random batch of 128 and reports their median,
the minor page faults and the system CPU seconds per step, and its peak resident memory.
Figures are medians over rounds. Writes benchmarks/allocator_results.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def measure(name: str, ann: bool, keep: bool, steps: int) -> dict:
    """One process's figures (runs in the child)."""
    import torch
    from bench_neuron import train_step

    from mtsnn.config import preset
    from mtsnn.experiments.tuning import keep_freed_memory

    torch.set_flush_denormal(True)
    if keep and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() found no glibc mallopt")
    cfg = preset(name, ann=ann)
    images = torch.randn(128, *cfg.input_shape).contiguous(memory_format=torch.channels_last)
    step, _, _ = train_step(cfg, images, torch.randint(0, 10, (128,)))
    for _ in range(3):
        step()
    before, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "step_s": statistics.median(times),
        "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "system_s_per_step": (after.ru_stime - before.ru_stime) / steps,
        "max_rss_mb": after.ru_maxrss / 1024,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--presets", default="mnist-cnn,fmnist-cnn")
    parser.add_argument("--child", nargs=3, metavar=("PRESET", "VARIANT", "ALLOCATOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, variant, allocator = args.child
        print(json.dumps(measure(name, variant == "ann", allocator == "kept", args.steps)))
        return
    results = {}
    for name in args.presets.split(","):
        for variant in ("snn", "ann"):
            runs = {"default": [], "kept": []}
            for _ in range(args.rounds):
                for allocator in runs:
                    out = subprocess.run(
                        [sys.executable, __file__, "--steps", str(args.steps), "--child", name, variant, allocator],
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    runs[allocator].append(json.loads(out.stdout))
            row = {
                allocator: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                for allocator, rs in runs.items()
            }
            row["speed_up"] = row["default"]["step_s"] / row["kept"]["step_s"]
            results[f"{name} {variant}"] = row
            print(f"{name} {variant}", json.dumps(row))
    print(
        "\n| preset | step s default / kept | speed-up | page faults per step default / kept "
        "| system s per step default / kept | peak RSS MB default / kept |\n|---|---|---|---|---|---|"
    )
    for key, row in results.items():
        d, k = row["default"], row["kept"]
        print(
            f"| {key} | {d['step_s']:.4f} / {k['step_s']:.4f} | {row['speed_up']:.2f} | "
            f"{d['page_faults_per_step']:.0f} / {k['page_faults_per_step']:.0f} | "
            f"{d['system_s_per_step']:.4f} / {k['system_s_per_step']:.4f} | "
            f"{d['max_rss_mb']:.0f} / {k['max_rss_mb']:.0f} |"
        )
    (HERE / "allocator_results.json").write_text(
        json.dumps({"rounds": args.rounds, "steps": args.steps, "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
