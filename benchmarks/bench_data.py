"""How fast data gets ready: MNIST from its gzip'd IDX files to a uint8 tensor, and CIFAR-10
training batches (128, random crop + flip + normalise) from the device loader.

    python benchmarks/bench_data.py [--data ROOT] [--cifar ROOT] [--device cuda] [--threads N]

MNIST is timed cold (no cached checksum, so the md5 of the uncompressed bytes is computed)
and warm (checksum cached); the files themselves are in the OS page cache either way.
CIFAR-10 uses, in order: --cifar / $MTSNN_CIFAR_PROXY (a folder holding
cifar-10-batches-bin/), else the shared JPEG proxy unpacked into a temporary folder when
pillow is installed, else random images of CIFAR's shape (the speed does not depend on the
pixels). Prints the results and writes them to benchmarks/data_results.json.
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from mtsnn import data

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MTSNN_SHARED_DATA", HERE.parents[1] / "shared" / "datasets"))


def time_mnist(root: Path, repeats: int = 5) -> dict:
    results = {}
    user_cache = os.environ.get("XDG_CACHE_HOME")
    for split in ("train", "test"):
        cold, warm = [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cache:
                os.environ["XDG_CACHE_HOME"] = cache  # a fresh, empty checksum cache
                for times in (cold, warm):
                    start = time.perf_counter()
                    dataset = data.load("mnist", split, root)
                    times.append(time.perf_counter() - start)
        assert dataset.verified
        if user_cache is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = user_cache
        results[split] = {"images": len(dataset), "cold_s": statistics.median(cold), "warm_s": statistics.median(warm)}
    return results


def cifar_train_set(folder: str | None, scratch: str) -> tuple[data.Dataset, str]:
    folder = folder or os.environ.get("MTSNN_CIFAR_PROXY")
    unpack = SHARED / "cifar10-jpeg75" / "to_binary.py"
    if not folder and unpack.is_file() and importlib.util.find_spec("PIL"):  # to_binary needs PIL
        subprocess.run([sys.executable, str(unpack), scratch], check=True, stdout=subprocess.DEVNULL)
        return _load_unverified(scratch), "the shared JPEG proxy, unpacked by to_binary.py"
    if folder:
        return _load_unverified(folder), f"binary batches in {folder}"
    images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (50_000,))
    return data.Dataset("cifar10", "train", images, labels, data.CLASSES["cifar10"], ()), "random"


def _load_unverified(folder: str) -> data.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.UnverifiedDataWarning)  # a proxy has no checksum
        return data.load("cifar10", "train", folder)


def time_cifar_batches(dataset: data.Dataset, device: str, seconds: float = 5.0) -> dict:
    loader = data.DeviceLoader(dataset, 128, train=True, device=device, seed=0, crop_padding=4, flip=True)
    batches, epoch = 0, 0
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    next(loader.epoch(0))  # warm up
    sync()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in loader.epoch(epoch):
            batches += 1
        epoch += 1
        sync()
    elapsed = time.perf_counter() - start
    return {
        "device": device,
        "batch_size": 128,
        "batches_per_s": batches / elapsed,
        "images_per_s": batches * 128 / elapsed,
        "epochs_timed": epoch,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED, help="data root holding MNIST/raw/")
    parser.add_argument("--cifar", help="data root holding cifar-10-batches-bin/")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (1 avoids slow spinning when another process keeps the cores busy)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        }
    }
    results["mnist_load"] = time_mnist(args.data)
    for split, r in results["mnist_load"].items():
        print(
            f"MNIST {split} ({r['images']} images), gzip files to uint8 tensor: "
            f"cold {r['cold_s']:.3f} s, warm {r['warm_s']:.3f} s"
        )

    with tempfile.TemporaryDirectory() as scratch:
        dataset, source = cifar_train_set(args.cifar, scratch)
        results["cifar_augmentation"] = {"data": source, **time_cifar_batches(dataset, args.device)}
    r = results["cifar_augmentation"]
    print(
        f"CIFAR-10 batches of 128 (crop + flip + normalise) on {r['device']}: "
        f"{r['batches_per_s']:.0f} batches/s ({r['images_per_s']:.0f} images/s), data: {source}"
    )

    out = HERE / "data_results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
