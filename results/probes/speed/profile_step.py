"""Where a training step of mnist-cnn's fast recipe spends its CPU time, with and without batch
norm: torch.profiler over 5 steps (batch 128, random images) after 5 to warm up.

    ./run python results/probes/speed/profile_step.py > results/probes/speed/profile_step.txt
"""

import time

import torch
from torch.profiler import ProfilerActivity, profile

from mtsnn.config import build_model, preset
from mtsnn.experiments.objective import OutputCurrent, loss_fn
from mtsnn.experiments.optimizer import make_optimizer


def profile_recipe(batch_norm: bool) -> None:
    torch.manual_seed(0)
    cfg = preset("mnist-cnn", recipe="fast", batch_norm=batch_norm)
    model = build_model(cfg)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    output_current = OutputCurrent(model)  # the recipe's output_floor reads it
    images, labels = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def step():
        loss = loss_fn(model(images), labels, cfg, output_current.current())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(10):
        step()
    seconds = (time.perf_counter() - start) / 10
    print(f"batch_norm={batch_norm}: {seconds:.4f} s a step ({torch.get_num_threads()} threads)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    for batch_norm in (False, True):
        profile_recipe(batch_norm)
