"""Checkpoints without pickle: tensors in the safetensors format, everything else as JSON.

safetensors layout (https://github.com/huggingface/safetensors, format section):
8 bytes little-endian header length ``n``, ``n`` bytes of UTF-8 JSON mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into
the byte buffer that follows) plus an optional ``"__metadata__"`` of string
values, then the buffer. This module writes and reads that layout itself so the
core needs nothing beyond torch and numpy; files it writes load with the
``safetensors`` package too. A checkpoint is one such file, whose metadata
``"mtsnn"`` holds the JSON state, written to a temporary file, flushed to disk
and renamed into place, so a crash leaves either the old or the new checkpoint.

Every file written here carries a digest in its metadata, ``"mtsnn_sha256"``: the sha256
of the canonical JSON (sorted keys, no spaces) of ``{"metadata": <the other metadata>,
"tensors": <the tensors' header entries>}`` followed by the whole byte buffer. Reading
verifies it, so a flipped byte anywhere in the weights, the optimizer state or the
header is refused, naming the file, instead of loading as wrong numbers. Files without
the key (written by other tools, or before it existed) load unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_BY_NAME = {v: k for k, v in _DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024
DIGEST = "mtsnn_sha256"  # the metadata key of the digest
if sys.byteorder != "little":  # safetensors stores little-endian bytes; we copy raw memory
    raise ImportError("mtsnn.checkpoint needs a little-endian machine")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and the problem."""


def atomic_write(path: str | Path, chunks) -> None:
    """Write byte chunks to ``path`` through a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write (a full disk) names no file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of the file at ``path``, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(entries: dict, metadata: dict[str, str], buffer) -> str:
    """The module docstring's digest of a file's tensor entries, metadata and byte buffer."""
    canonical = json.dumps({"metadata": metadata, "tensors": entries}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode())
    digest.update(buffer)
    return digest.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    if DIGEST in (metadata or {}):
        raise ValueError(f"metadata key {DIGEST!r} is reserved for the file's digest")
    entries, buffers, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r} has unsupported dtype {t.dtype}")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        entries[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        buffers.append(raw)
        offset += len(raw)
    digest = _digest(entries, dict(metadata or {}), b"".join(buffers))
    header = {"__metadata__": {**(metadata or {}), DIGEST: digest}, **entries}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the buffer to 8 bytes
    atomic_write(path, [struct.pack("<Q", len(blob)), blob, *buffers])


def _naturals(value, length: int | None = None) -> bool:
    """Whether ``value`` is a JSON list of integers >= 0 (of ``length`` items if given)."""
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(type(v) is int and v >= 0 for v in value)
    )


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) < 8:
        raise CheckpointError(f"{path}: too short ({len(data)} bytes) to be a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise CheckpointError(f"{path}: header length {n} does not fit the file ({len(data)} bytes); truncated?")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is a JSON {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must map names to strings, got {metadata!r}")
    buffer = memoryview(data)[8 + n :]
    tensors = {}
    for name, info in header.items():
        if not (
            isinstance(info, dict)
            and info.get("dtype") in _BY_NAME
            and _naturals(info.get("data_offsets"), length=2)
            and _naturals(info.get("shape"))
        ):
            raise CheckpointError(
                f"{path}: tensor {name!r} has a malformed header entry {info!r} (need a "
                f"dtype of {', '.join(_BY_NAME)}, 2 data_offsets and a shape, as integers >= 0)"
            )
        dtype, (begin, end), shape = _BY_NAME[info["dtype"]], info["data_offsets"], info["shape"]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= len(buffer) or end - begin != itemsize * int(np.prod(shape)):
            raise CheckpointError(
                f"{path}: tensor {name!r} has offsets {[begin, end]} that do not match "
                f"its shape {shape} or the file size; truncated?"
            )
        raw = torch.tensor(np.frombuffer(buffer[begin:end], dtype=np.uint8))  # a copy, writable
        tensors[name] = raw.view(dtype).reshape(shape)
    expected = metadata.pop(DIGEST, None)
    if expected is not None and _digest(header, metadata, buffer) != expected:
        raise CheckpointError(
            f"{path}: its contents do not match the digest written with them (sha256 "
            f"{expected[:12]}...): the file was damaged after it was saved"
        )
    return tensors, metadata


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """One file: ``tensors`` plus the JSON-serialisable ``state`` in the metadata."""
    save_tensors(path, tensors, {"mtsnn": json.dumps(state)})


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, metadata = load_tensors(path)
    if "mtsnn" not in metadata:
        raise CheckpointError(f"{path}: not an mtsnn checkpoint (no 'mtsnn' metadata)")
    try:
        return tensors, json.loads(metadata["mtsnn"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its mtsnn metadata is not valid JSON ({e})") from None
