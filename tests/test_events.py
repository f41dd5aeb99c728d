"""Event input (issue 18): tonic's binning feeds the network time-major, and a small SNN learns
the direction of a moving bar from synthetic DVS events."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtsnn import from_spec
from mtsnn.events import DIRECTIONS, EVENT_DTYPE, collate, moving_bars, to_frames

pytest.importorskip("tonic")


def test_frames_count_each_polarity_per_pixel_per_time_bin():
    events = np.zeros(5, dtype=EVENT_DTYPE)
    events["x"], events["y"] = [1, 1, 3, 0, 2], [2, 2, 0, 1, 2]
    events["t"], events["p"] = [0, 10, 60, 70, 100], [1, 1, 0, 1, 0]
    frames = to_frames(events, (4, 3, 2), 2)  # sensor 4 wide, 3 high; bins [0, 50) and [50, 100)
    assert frames.shape == (2, 2, 3, 4) and frames.dtype == torch.float32
    expected = torch.zeros(2, 2, 3, 4)
    expected[0, 1, 2, 1] = 2  # two ON events at (x=1, y=2), both in the first bin
    expected[1, 0, 0, 3] = 1  # OFF at (3, 0) and ON at (0, 1) in the second
    expected[1, 1, 1, 0] = 1
    frames[:, 0, 2, 2] = 0  # the event that closes the recording: tonic's edge, not ours to test
    assert torch.equal(frames, expected)


def test_batches_are_time_major():
    frames, labels = collate([(torch.full((5, 2, 4, 4), float(i)), i) for i in range(3)])
    assert frames.shape == (5, 3, 2, 4, 4) and labels.tolist() == [0, 1, 2]
    assert torch.equal(frames[:, 2], torch.full((5, 2, 4, 4), 2.0))


def test_an_snn_learns_the_direction_of_a_moving_bar_from_its_events():
    steps, sensor = 8, (16, 16, 2)
    train = [(to_frames(e, sensor, steps), y) for e, y in moving_bars(1200, seed=0)]
    test = [(to_frames(e, sensor, steps), y) for e, y in moving_bars(400, seed=1)]
    assert sorted({y for _, y in test}) == list(range(len(DIRECTIONS)))
    torch.manual_seed(0)
    net = from_spec("8C3-P2-16C3-P2-64", (2, 16, 16), len(DIRECTIONS), v_th=1.0, s_max=3)
    optimizer = torch.optim.Adam(net.parameters(), 0.003)
    order = torch.randperm(len(train))
    for i in range(0, len(train), 32):  # one epoch
        frames, labels = collate([train[j] for j in order[i : i + 32]])
        loss = F.cross_entropy(net(frames).sum(0), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    frames, labels = collate(test)
    with torch.no_grad():
        accuracy = (net(frames).sum(0).argmax(1) == labels).float().mean().item()
        reversed_time = (net(frames.flip(0)).sum(0).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.95
    assert reversed_time < 0.5, reversed_time  # played backwards, the bar goes the other way: it reads time
