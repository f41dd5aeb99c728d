"""Fetching data files from public mirrors and unpacking archives, both without ever leaving
a wrong or partial file where a loader would find it.

A download streams into a temporary file beside its destination, is checked against its
published md5, and only then renamed into place (an atomic step on one file system).
"""

import hashlib
import http.client
import os
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PureWindowsPath

from .checkpoint import usual_permissions

CHUNK = 1 << 20


class DatasetError(Exception):
    """Any problem with data files: missing, corrupt, malformed or undownloadable."""


def md5_of(data) -> str:
    # md5 because it is what the data sets' authors publish; it guards against corruption,
    # not tampering (pickles are read with a restricted unpickler for that).
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def fetch(
    filename: str, mirrors: list[str], folder: Path, md5: str, *, timeout: float = 30.0, progress: bool = True
) -> Path:
    """Download ``filename`` into ``folder`` from the first mirror that serves it intact.

    Each mirror is a base address ending in "/". A file already in place with the right md5
    is kept. ``timeout`` bounds every network wait, so a stalled mirror is given up on
    while a slow but moving download carries on. Raises DatasetError when all mirrors fail.
    """
    folder = Path(folder)
    dest = folder / filename
    if dest.is_file() and _file_md5(dest) == md5:
        return dest
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create {folder} to download {filename} into: {exc}") from exc
    failures = []
    for base in mirrors:
        url = base + filename
        try:
            _download(url, dest, md5, timeout, progress)
            return dest
        except (OSError, http.client.HTTPException, _BadDownload) as exc:
            failures.append(f"{url}: {_reason(exc)}")
    raise DatasetError(
        f"could not download {filename}; tried:\n  "
        + "\n  ".join(failures or ["(no mirrors)"])
        + f"\nDownload it by hand (md5 {md5}) and put it in {folder}"
    )


class _BadDownload(Exception):
    pass


def _download(url: str, dest: Path, md5: str, timeout: float, progress: bool) -> None:
    tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False)
    try:
        usual_permissions(tmp.fileno())
        with tmp, urllib.request.urlopen(url, timeout=timeout) as response:
            expected_size = int(response.headers.get("Content-Length") or 0) or None
            digest = hashlib.md5(usedforsecurity=False)
            meter = _Progress(dest.name, expected_size) if progress else None
            received = 0
            while chunk := response.read(CHUNK):
                tmp.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if meter:
                    meter.update(received)
            if meter:
                meter.finish(received)
        # http.client returns a short body without complaint when the connection drops
        if expected_size is not None and received != expected_size:
            raise _BadDownload(f"truncated: received {received} of {expected_size} bytes")
        if digest.hexdigest() != md5:
            raise _BadDownload(f"md5 {digest.hexdigest()}, expected {md5}")
        os.replace(tmp.name, dest)
    finally:
        if os.path.exists(tmp.name):
            os.remove(tmp.name)


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Progress:
    """A one-line progress report on stderr, redrawn at most a few times a second."""

    def __init__(self, name: str, total: int | None):
        self.name, self.total, self.last_draw = name, total, 0.0

    def update(self, received: int) -> None:
        now = time.monotonic()
        if now - self.last_draw >= 0.25:
            self.last_draw = now
            self._draw(received)

    def finish(self, received: int) -> None:
        self._draw(received)
        sys.stderr.write("\n")

    def _draw(self, received: int) -> None:
        done = f"{received / 1e6:.1f} MB"
        if self.total:
            done += f" of {self.total / 1e6:.1f} MB ({100 * received // self.total}%)"
        sys.stderr.write(f"\rdownloading {self.name}: {done}")
        sys.stderr.flush()


def extract_tar(archive: Path, folder: Path) -> None:
    """Unpack a tar archive into ``folder``, refusing any member that is not a plain file or
    directory, or whose path is absolute or climbs out with "..": a crafted archive must not
    write outside ``folder``."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12: a second guard
                tar.extractall(folder, members, filter="data")
            else:
                tar.extractall(folder, members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"{archive}: cannot unpack: {exc}") from exc


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    # Windows path rules split on both separators and see drives, so they catch more
    name = PureWindowsPath(member.name)
    if not (member.isfile() or member.isdir()):
        problem = "a link" if member.issym() or member.islnk() else "a device or other special file"
    elif name.anchor:  # a root (/ or \) or a drive
        problem = "an absolute path"
    elif ".." in name.parts:
        problem = "a path with '..'"
    else:
        return
    raise DatasetError(f"{archive}: refusing to unpack member {member.name!r}: it is {problem}")
