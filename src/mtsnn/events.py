"""Event-camera input: events binned into T frames by tonic, fed to a :class:`SpikingNetwork`
as a sequence ``[T, B, P, H, W]``; and a synthetic moving-bar task to check a pipeline
without downloading anything.

Events are tonic's structured arrays (fields ``x``, ``y``, ``t`` in microseconds, ``p``
polarity). :func:`to_frames` is tonic's ``ToFrame`` with ``n_time_bins=T``: the count of
events of each polarity at each pixel in each of T equal time bins. Needs ``pip install
mtsnn[events]``.

Example, N-MNIST (34 x 34 pixels, 2 polarities; downloads itself where there is internet)::

    import tonic, torch, mtsnn
    from mtsnn import events
    train = tonic.datasets.NMNIST("data", train=True)
    net = mtsnn.from_spec("16C5-P2-32C5-P2-256", (2, 34, 34), 10)
    frames, labels = events.collate([(events.to_frames(ev, train.sensor_size, 10), y)
                                     for ev, y in (train[i] for i in range(128))])
    counts = net(frames)                       # [10, 128, 10]: frames [10, 128, 2, 34, 34]
"""

from __future__ import annotations

import numpy as np
import torch

DIRECTIONS = ("right", "left", "down", "up")  # the classes of moving_bars, in label order
EVENT_DTYPE = np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])  # tonic's, as for N-MNIST


def to_frames(events: np.ndarray, sensor_size: tuple[int, int, int], num_steps: int) -> torch.Tensor:
    """``[T, P, H, W]`` float32 event counts of ``events`` over ``sensor_size`` (W, H, P) in
    ``num_steps`` equal time bins (tonic's ``ToFrame``)."""
    try:
        from tonic.transforms import ToFrame
    except ImportError:
        raise ImportError("event input needs the tonic package: pip install mtsnn[events]") from None
    frames = ToFrame(sensor_size=sensor_size, n_time_bins=num_steps)(events)
    return torch.as_tensor(frames, dtype=torch.float32)


def collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``(frames [T, P, H, W], label)`` as ``(frames [T, B, P, H, W], labels [B])``, the
    time-major layout :class:`SpikingNetwork` takes."""
    frames = torch.stack([f for f, _ in samples], 1)
    return frames, torch.tensor([label for _, label in samples])


def moving_bars(n: int, size: int = 16, seed: int = 0, noise: float = 0.1) -> list[tuple[np.ndarray, int]]:
    """``n`` synthetic event recordings of a bright bar, 3 pixels wide, crossing a ``size`` x
    ``size`` sensor in one of :data:`DIRECTIONS` (the label) at one pixel per millisecond.
    As a DVS sees it: ON events (p=1) where the leading edge arrives, OFF events (p=0)
    where the trailing edge leaves, each pixel reporting with probability 0.8, plus
    ``noise`` x as many events at random pixels, times and polarities. Sensor size
    ``(size, size, 2)``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        label = int(rng.integers(len(DIRECTIONS)))
        start, moves = int(rng.integers(0, 3)), size - 6
        along, across, t, p = [], [], [], []
        for step in range(moves):
            for edge, polarity in ((start + step + 3, 1), (start + step, 0)):  # leading edge ON, trailing OFF
                rows = np.flatnonzero(rng.random(size) < 0.8)
                along += [edge] * len(rows)
                across += rows.tolist()
                t += (step * 1000 + rng.integers(0, 1000, len(rows))).tolist()
                p += [polarity] * len(rows)
        k = int(noise * len(t))
        along += rng.integers(0, size, k).tolist()
        across += rng.integers(0, size, k).tolist()
        t += rng.integers(0, moves * 1000, k).tolist()
        p += rng.integers(0, 2, k).tolist()
        forward, sideways = np.array(along), np.array(across)
        if DIRECTIONS[label] in ("left", "up"):  # the same motion mirrored
            forward = size - 1 - forward
        x, y = (forward, sideways) if DIRECTIONS[label] in ("right", "left") else (sideways, forward)
        events = np.zeros(len(t), dtype=EVENT_DTYPE)
        events["x"], events["y"], events["t"], events["p"] = x, y, t, p
        out.append((events[np.argsort(events["t"], kind="stable")], label))
    return out
