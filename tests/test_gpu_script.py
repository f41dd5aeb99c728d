"""The GPU run of issue 21 (benchmarks/gpu_cifar10.sh), dry-run on the CPU with tiny limits:
it unpacks the CIFAR-10 JPEG proxy, trains, and writes what the GPU run must bring back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runs import SHARED

REPO = Path(__file__).resolve().parents[1]
PROXY = SHARED / "cifar10-jpeg75" / "cifar10_jpeg75.npz.gz"


def dry_run(mode: str, out: Path, **settings) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "OUT": str(out), **settings}
    return subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_cifar10.sh"), mode],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.skipif(not PROXY.exists(), reason=f"no CIFAR-10 proxy at {PROXY}")
def test_the_train_mode_unpacks_the_proxy_trains_and_writes_its_throughput(tmp_path):
    pytest.importorskip("PIL")
    done = dry_run(
        "train",
        tmp_path / "out",
        PROXY=str(PROXY),
        MTSNN_DATA=str(tmp_path / "data"),
        BUDGET="1m",
        EPOCHS="1",
        TRAIN_LIMIT="128",
        TEST_LIMIT="50",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    records = (tmp_path / "data" / "cifar-10-batches-bin" / "test_batch.bin").stat().st_size
    assert records == 10_000 * 3073  # the official binary layout, all 10,000 test images
    throughput = json.loads((tmp_path / "out" / "throughput.json").read_text())
    assert throughput["epochs"] == 1 and throughput["images_per_second"][0] > 0 and throughput["peak_memory_mb"] > 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["unverified_data"] and "test_acc" in summary  # the proxy: no checksum vouches for it
    assert "amp = true" in (tmp_path / "out" / "config.toml").read_text()


def test_the_neuron_mode_writes_the_benchmark_with_the_relu_floor(tmp_path):
    done = dry_run("neuron", tmp_path / "out", QUICK="1")
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "out" / "neuron_results.json").read_text())
    for times in results["neuron"].values():
        assert "torch.relu (floor)" in times and any(name.startswith("mtsnn paper") for name in times)
    assert "x ReLU" in (tmp_path / "out" / "RESULTS.md").read_text()


def test_a_machine_without_cuda_is_told_so():
    if sys.modules.get("torch") and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_cifar10.sh"), "train"],
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable, "OUT": "/tmp/mtsnn-gpu-none"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "has no usable CUDA" in done.stdout + done.stderr
