"""Process-wide settings that make training faster on a CPU. The command line applies them
(:func:`tune_process`) before it trains; a program that imports mtsnn keeps its own."""

from __future__ import annotations

import ctypes
import ctypes.util

import torch


def tune_process() -> None:
    """Flush subnormal floats to zero in this thread (tiny surrogate x gradient products made
    CPU matmuls several times slower) and keep freed memory (:func:`keep_freed_memory`)."""
    torch.set_flush_denormal(True)
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    By default glibc serves each block over its mmap threshold (128 KiB, adapting up to
    32 MiB) with a fresh mapping and unmaps it on free, so every training step faults in
    and zeroes its activations afresh. Measured on a fmnist-cnn SNN step on this 2-core CPU:
    about 15,000 page faults and 10-30% of the step (``benchmarks/bench_allocator.py``).
    Raising both thresholds keeps blocks up to 32 MiB in the heap, costing only the peak
    memory staying reserved. Affects the whole process; returns False where the C library
    has no ``mallopt`` (not glibc), leaving the allocator as it was.
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
