"""Checkpoint files: round trips, files of other safetensors writers, bad and damaged files named."""

import json
import struct

import pytest
import safetensors.torch as st
import torch

from mtsnn.checkpoint import CheckpointError, load_checkpoint, load_tensors, save_checkpoint, save_tensors


def sample():
    torch.manual_seed(0)
    return {
        "w": torch.randn(3, 4),
        "d": torch.randn(5, dtype=torch.float64),
        "step": torch.tensor(7),
        "rng": torch.randint(0, 255, (10,), dtype=torch.uint8),
        "empty": torch.zeros(0, 2),
        "half": torch.randn(2, 2).to(torch.bfloat16),
        "mask": torch.tensor([True, False]),
    }


def test_round_trip_is_exact(tmp_path):
    tensors = sample()
    save_tensors(tmp_path / "a.safetensors", tensors, {"note": "hi"})
    back, meta = load_tensors(tmp_path / "a.safetensors")
    assert meta == {"note": "hi"} and set(back) == set(tensors)
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and torch.equal(back[k], tensors[k])


def test_files_are_real_safetensors_both_ways(tmp_path):
    tensors = sample()
    save_tensors(tmp_path / "ours.safetensors", tensors, {"k": "v"})
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    assert all(torch.equal(theirs[k], tensors[k]) for k in tensors)
    st.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"x": "y"})
    back, meta = load_tensors(tmp_path / "theirs.safetensors")
    assert meta == {"x": "y"} and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_checkpoint_state_round_trip(tmp_path):
    save_checkpoint(tmp_path / "c.safetensors", {"a": torch.ones(2)}, {"epoch": 3, "acc": {"x": 1.5}})
    tensors, state = load_checkpoint(tmp_path / "c.safetensors")
    assert state == {"epoch": 3, "acc": {"x": 1.5}} and torch.equal(tensors["a"], torch.ones(2))


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save_tensors(path, {"a": torch.ones(2)})

    class Boom:
        def detach(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_tensors(path, {"a": torch.zeros(2), "b": Boom()})
    assert torch.equal(load_tensors(path)[0]["a"], torch.ones(2))  # the old file survives
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:5], "header too small"),
        (lambda b: b[:-3], "incomplete metadata"),
        (lambda b: struct.pack("<Q", 10**12) + b[8:], "header too large"),
        (lambda b: b[:8] + b"{" * (len(b) - 8), "invalid JSON"),
    ],
)
def test_damaged_files_raise_errors_naming_the_file(tmp_path, damage, message):
    path = tmp_path / "c.safetensors"
    save_tensors(path, {"a": torch.arange(6.0)})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=f"not a readable safetensors file .*{message}") as info:
        load_tensors(path)
    assert str(path) in str(info.value)


def with_header(header) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + bytes(24)


@pytest.mark.parametrize(
    "header, message",
    [
        ([1, 2], "invalid JSON in header: invalid type: sequence"),
        ({"__metadata__": {"mtsnn": 3}}, "expected a string"),
        ({"a": "F32"}, "expected struct TensorInfo"),
        ({"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, "unknown variant `F99`"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, 'invalid type: string "0"'),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "invalid value: integer `-2`"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, "invalid length 1"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "invalid shape, data type, or offset"),
        ({"a": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 0]}}, "overflow"),
    ],
)
def test_malformed_headers_raise_errors_naming_the_file(tmp_path, header, message):
    path = tmp_path / "c.safetensors"
    path.write_bytes(with_header(header))
    with pytest.raises(CheckpointError, match=message) as info:
        load_tensors(path)
    assert str(path) in str(info.value)


def test_not_a_checkpoint(tmp_path):
    save_tensors(tmp_path / "plain.safetensors", {"a": torch.ones(1)})
    with pytest.raises(CheckpointError, match="not an mtsnn checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_header_is_plain_json(tmp_path):
    save_tensors(tmp_path / "c.safetensors", {"a": torch.ones(3)}, {"m": "1"})
    raw = (tmp_path / "c.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert header["a"] == {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}
