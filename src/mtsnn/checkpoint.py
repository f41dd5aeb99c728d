"""Checkpoints without pickle: tensors in the safetensors format, everything else as JSON.

The ``safetensors`` package writes and reads the files (it checks every header entry, offset
and shape); this module adds what mtsnn needs on top. A checkpoint is one such file, whose
metadata ``"mtsnn"`` holds the JSON state, written to a temporary file, flushed to disk and
renamed into place, so a crash leaves either the old or the new checkpoint.

Every file written here carries a digest in its metadata, ``"mtsnn_sha256"``: the sha256
of the canonical JSON (sorted keys, no spaces) of ``{"metadata": <the other metadata>,
"tensors": <the tensors' header entries>}`` followed by the whole byte buffer (the layout:
8 bytes little-endian header length ``n``, ``n`` bytes of JSON header, then the buffer;
https://github.com/huggingface/safetensors, format section). Reading verifies it, so a
flipped byte anywhere in the weights, the optimizer state or the header is refused, naming
the file, instead of loading as wrong numbers. Files without the key (written by other
tools, or before it existed) load unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError

DIGEST = "mtsnn_sha256"  # the metadata key of the digest


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and the problem."""


def usual_permissions(fd: int) -> None:
    """Give the open file ``fd`` the mode a plain ``open`` would (0666 less the umask): the
    temporary files that become outputs are made 0600, which others sharing a folder cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)


def atomic_write(path: str | Path, chunks) -> None:
    """Write byte chunks to ``path`` through a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        usual_permissions(fd)
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


def _parts(blob: bytes) -> tuple[dict, dict[str, str], memoryview]:
    """The tensors' header entries, the metadata and the byte buffer of the safetensors file
    ``blob`` (already checked by the safetensors package)."""
    (n,) = struct.unpack("<Q", blob[:8])
    entries = json.loads(blob[8 : 8 + n])
    return entries, entries.pop("__metadata__", None) or {}, memoryview(blob)[8 + n :]


def _digest(entries: dict, metadata: dict[str, str], buffer) -> str:
    """The module docstring's digest of a file's tensor entries, metadata and byte buffer."""
    canonical = json.dumps({"metadata": metadata, "tensors": entries}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode())
    digest.update(buffer)
    return digest.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """``tensors`` and the string ``metadata`` to the safetensors file ``path``, atomically,
    with the digest added to the metadata."""
    metadata = dict(metadata or {})
    if DIGEST in metadata:
        raise ValueError(f"metadata key {DIGEST!r} is reserved for the file's digest")
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    # the header entries and the buffer, which the metadata added next does not move
    entries, _, buffer = _parts(safetensors.torch.save(tensors, metadata))
    digest = _digest(entries, metadata, buffer)
    atomic_write(path, [safetensors.torch.save(tensors, {**metadata, DIGEST: digest})])


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (writable copies) and the metadata of the safetensors file ``path``;
    CheckpointError, naming the file, for one that is unreadable, malformed or damaged."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        tensors = safetensors.torch.load(blob)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); truncated or damaged?") from None
    entries, metadata, buffer = _parts(blob)
    expected = metadata.pop(DIGEST, None)
    if expected is not None and _digest(entries, metadata, buffer) != expected:
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
