"""MNIST, Fashion-MNIST and CIFAR-10 held whole in memory, and a loader that batches,
augments and normalises them on the training device (the airbench way: no per-sample
Python work, no worker processes).

Files are found in torchvision's layout under a data root, so a torchvision download
folder works as is::

    ROOT/MNIST/raw/train-images-idx3-ubyte[.gz], ...        IDX, raw or gzip'd
    ROOT/FashionMNIST/raw/...
    ROOT/cifar-10-batches-bin/data_batch_1.bin, ...         preferred: no pickle
    ROOT/cifar-10-batches-py/data_batch_1, ...         pickles: unpickled only when their
                                                            md5 is the official release's

Integrity. Every file's structure is checked (magic numbers, sizes, counts, label ranges).
A file whose checksum is known (CHECKSUMS: the md5 of its uncompressed content, so any gzip
wrapper of the right bytes passes) is also checked against it before it is parsed, and the
success is remembered in the user cache, keyed by path, size and modification time (except
for pickles, hashed at every load).
CIFAR-10's binary batches have no published checksum (only their archive has): they count
as verified only when this module unpacked them from an archive it checked; any other copy
(such as a JPEG proxy converted to this layout) loads with an UnverifiedDataWarning and is
listed in ``Dataset.unverified``.
"""

import gzip
import io
import json
import math
import os
import pickle
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import atomic_write
from .download import DatasetError, extract_tar, fetch, md5_of

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

__all__ = [
    "CHECKSUMS",
    "CLASSES",
    "DOWNLOADS",
    "DatasetError",
    "Dataset",
    "DeviceLoader",
    "MIRRORS",
    "NORMALISATION",
    "UnverifiedDataWarning",
    "data_root",
    "load",
]

CLASSES = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
SPLITS = ("train", "test")

# Per-channel mean and standard deviation of the training images on the 0..1 scale
NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

IDX_FOLDERS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw"}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGE_SIZE = (28, 28)

CIFAR_BIN, CIFAR_PY = "cifar-10-batches-bin", "cifar-10-batches-py"
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_RECORDS_PER_BATCH = 10_000
CIFAR_SHAPE = (3, 32, 32)
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"

# md5 of each file's uncompressed content, by its path under the data root
CHECKSUMS = {
    "MNIST/raw/train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "MNIST/raw/train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "MNIST/raw/t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "MNIST/raw/t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    "FashionMNIST/raw/train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "FashionMNIST/raw/train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "FashionMNIST/raw/t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "FashionMNIST/raw/t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
}

# Base addresses tried in order, and the published md5 of each file as they serve it
MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/", "https://cave.cs.toronto.edu/kriz/"],
}
DOWNLOADS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {CIFAR_ARCHIVE: "c32a1d4ab5d03f1284b67883e8d87530"},
}


class UnverifiedDataWarning(UserWarning):
    """Data loaded from files that could not be checked against a known checksum."""


@dataclass(frozen=True, repr=False)
class Dataset:
    """One split of a data set, whole, as tensors: ``images`` uint8 ``[N, C, H, W]``,
    ``labels`` int64 ``[N]``. :func:`load` reads one (``load("mnist", "train")``)."""

    name: str
    split: str
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    classes: list[str]
    source: tuple[Path, ...]  # the files read
    unverified: tuple[Path, ...] = ()  # those of them not checked against a known checksum

    @property
    def verified(self) -> bool:
        return not self.unverified

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> "Dataset":
        """The first ``n`` examples, for quick checks."""
        if n < 1:
            raise ValueError(f"subset needs at least one example, got {n}")
        return replace(self, images=self.images[:n], labels=self.labels[:n])

    def hold_out(self, n: int) -> tuple["Dataset", "Dataset"]:
        """(the rest, ``n`` held-out examples): a validation split. The held-out examples are a
        random choice that depends on nothing but the data set's size, so every run, whatever
        its seed, holds out the same ones."""
        if not 1 <= n < len(self):
            raise ValueError(
                f"cannot hold out {n} of the {len(self)} {self.name} {self.split} examples (need 1 <= n < {len(self)})"
            )
        order = torch.randperm(len(self), generator=_generator(_HOLD_OUT_KEY, len(self)))
        rest, held = order[:-n].sort().values, order[-n:].sort().values
        split = f"{self.split}-held-out"
        return (
            replace(self, images=self.images[rest], labels=self.labels[rest]),
            replace(self, split=split, images=self.images[held], labels=self.labels[held]),
        )

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape[1:]))
        trust = "verified" if self.verified else f"UNVERIFIED: {len(self.unverified)} file(s)"
        return f"Dataset({self.name} {self.split}: {len(self)} images of {shape}, {len(self.classes)} classes, {trust})"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder data sets live under: ``root`` if given, else $MTSNN_DATA, else the user cache."""
    return Path(root or os.environ.get("MTSNN_DATA") or _user_cache()).expanduser()


def load(name: str, split: str, root: str | os.PathLike | None = None, *, download: bool = False) -> Dataset:
    """Load a whole split of "mnist", "fashion-mnist" or "cifar10" ("train" or "test").

    With ``download=True`` missing files are fetched from MIRRORS first. Raises DatasetError
    for any missing, damaged or malformed file.
    """
    if name not in CLASSES:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(CLASSES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    root = data_root(root)
    find, parse = (_cifar_files, _parse_cifar) if name == "cifar10" else (_idx_files, _parse_idx)
    files = find(name, split, root, download)
    # Every checksum is checked before any file is parsed, so a file with a known checksum
    # is read further (for CIFAR's python batches: unpickled) only if it is the official one
    checked = _CheckedFiles()
    unverified = tuple(f.path for f in files if not checked.verify(f))
    if unverified:
        warnings.warn(
            f"{name} {split}: no known checksum to check {', '.join(map(str, unverified))} against; loaded unverified",
            UnverifiedDataWarning,
            stacklevel=2,
        )
    images, labels = parse(name, files)
    return Dataset(
        name,
        split,
        torch.from_numpy(images),
        torch.from_numpy(labels.astype(np.int64)),
        list(CLASSES[name]),
        tuple(f.path for f in files),
        unverified,
    )


@dataclass(frozen=True)
class _File:
    path: Path
    key: str  # its path under the root, without .gz: the key into CHECKSUMS
    content: bytes  # uncompressed
    stat: os.stat_result  # taken before reading, so a later change shows


def _read_file(path: Path, key: str) -> _File:
    try:
        stat = path.stat()
        content = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if path.suffix == ".gz":
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path}: corrupt or truncated gzip file: {exc}") from exc
    return _File(path, key, content, stat)


def _missing(name: str, split: str, folder: Path, files: list[str], alternative: str = "") -> DatasetError:
    return DatasetError(
        f"{name} {split}: {', '.join(files)} not found in {folder}{alternative}. Pass "
        f"download=True to fetch them, or put the files there (a torchvision download folder "
        f"works as is)."
    )


# ---- MNIST and Fashion-MNIST: IDX files ----


def _idx_files(name: str, split: str, root: Path, download: bool) -> list[_File]:
    """The split's images file, then its labels file."""
    folder = root / IDX_FOLDERS[name]
    stems = IDX_FILES[split]
    if download:
        for stem in stems:
            if _idx_path(folder, stem) is None:
                fetch(stem + ".gz", MIRRORS[name], folder, DOWNLOADS[name][stem + ".gz"])
    found = {stem: _idx_path(folder, stem) for stem in stems}
    missing = [stem + "[.gz]" for stem, path in found.items() if path is None]
    if missing:
        raise _missing(name, split, folder, missing)
    return [_read_file(path, f"{IDX_FOLDERS[name]}/{stem}") for stem, path in found.items() if path is not None]


def _parse_idx(name: str, files: list[_File]) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = files
    images = _idx_array(images_file, ndim=3)
    labels = _idx_array(labels_file, ndim=1)
    if images.shape[1:] != IDX_IMAGE_SIZE:
        raise DatasetError(
            f"{images_file.path}: images are {images.shape[1]}x{images.shape[2]}, "
            f"expected {IDX_IMAGE_SIZE[0]}x{IDX_IMAGE_SIZE[1]}"
        )
    if len(images) != len(labels):
        raise DatasetError(
            f"{labels_file.path} holds {len(labels)} labels but {images_file.path} holds {len(images)} images"
        )
    _check_labels(labels_file.path, labels, len(CLASSES[name]))
    # a copy, because frombuffer's view of the file's bytes is read-only
    return images[:, None].copy(), labels


def _idx_path(folder: Path, stem: str) -> Path | None:
    """The uncompressed file if present (fastest to read), else the gzip'd one."""
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _idx_array(file: _File, ndim: int) -> np.ndarray:
    """The array in an IDX file of unsigned bytes with ``ndim`` dimensions."""
    data = file.content
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{file.path}: {len(data)} bytes is too short for an IDX header")
    magic, *dims = struct.unpack(f">{1 + ndim}I", data[:header])
    expected_magic = 0x0800 + ndim  # two zero bytes, type 0x08 (unsigned byte), dimension count
    if magic != expected_magic:
        raise DatasetError(
            f"{file.path}: IDX magic number is 0x{magic:08x}, expected "
            f"0x{expected_magic:08x} (unsigned bytes in {ndim} dimensions)"
        )
    size = math.prod(dims)
    if len(data) - header != size:
        raise DatasetError(
            f"{file.path}: the header promises {size} bytes for dimensions "
            f"{tuple(dims)} but {len(data) - header} follow (truncated or padded)"
        )
    return np.frombuffer(data, np.uint8, size, header).reshape(dims)


# ---- CIFAR-10: binary or python batches ----


def _cifar_files(name: str, split: str, root: Path, download: bool) -> list[_File]:
    """The split's batches, in order, in the python layout if only it is complete, else in
    the binary one (downloaded if asked)."""
    batches = CIFAR_BATCHES[split]
    binary = [root / CIFAR_BIN / f"{batch}.bin" for batch in batches]
    python = [root / CIFAR_PY / batch for batch in batches]
    if all(p.is_file() for p in python) and not all(p.is_file() for p in binary):
        return [_read_file(p, f"{CIFAR_PY}/{p.name}") for p in python]
    if download and not all(p.is_file() for p in binary):
        _download_cifar(root)
    missing = [p.name for p in binary if not p.is_file()]
    if missing:
        raise _missing(
            name, split, root / CIFAR_BIN, missing, f" (nor is the python layout complete in {root / CIFAR_PY})"
        )
    return [_read_file(p, f"{CIFAR_BIN}/{p.name}") for p in binary]


def _parse_cifar(name: str, files: list[_File]) -> tuple[np.ndarray, np.ndarray]:
    parsed = [_cifar_python_batch(f) if _is_pickle(f) else _cifar_binary_batch(f) for f in files]
    return (np.concatenate([images for images, _ in parsed]), np.concatenate([labels for _, labels in parsed]))


def _is_pickle(file: _File) -> bool:
    return file.key.startswith(CIFAR_PY + "/")


def _cifar_binary_batch(file: _File) -> tuple[np.ndarray, np.ndarray]:
    """Records of one label byte then 3072 pixel bytes (red, green, blue planes, row-major)."""
    record = 1 + math.prod(CIFAR_SHAPE)
    size = len(file.content)
    if size % record:
        raise DatasetError(
            f"{file.path}: {size} bytes is not a whole number of {record}-byte records (truncated or damaged)"
        )
    if size // record != CIFAR_RECORDS_PER_BATCH:
        raise DatasetError(f"{file.path}: {size // record} records, expected {CIFAR_RECORDS_PER_BATCH}")
    records = np.frombuffer(file.content, np.uint8).reshape(-1, record)
    _check_labels(file.path, records[:, 0], len(CLASSES["cifar10"]))
    return records[:, 1:].reshape(-1, *CIFAR_SHAPE), records[:, 0]


class _CifarUnpickler(pickle.Unpickler):
    """Builds only what CIFAR-10's python batches hold (dicts, lists, bytes, numbers and uint8
    arrays), so that a crafted file cannot make unpickling call anything else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # as numpy 1 writes it
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # as numpy 2 writes it
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _cifar_python_batch(file: _File) -> tuple[np.ndarray, np.ndarray]:
    try:
        # The official batches are Python 2 pickles; "bytes" keeps their strings as bytes
        batch = _CifarUnpickler(io.BytesIO(file.content), encoding="bytes").load()
    except Exception as exc:  # a damaged or crafted pickle can fail in any way; none may pass
        raise DatasetError(f"{file.path}: not a readable CIFAR-10 python batch: {exc}") from exc
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= batch.keys():
        raise DatasetError(f"{file.path}: not a CIFAR-10 python batch (expected a dict with b'data' and b'labels')")
    images, labels = batch[b"data"], np.asarray(batch[b"labels"])
    pixels = math.prod(CIFAR_SHAPE)
    expected = (CIFAR_RECORDS_PER_BATCH, pixels)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape != expected:
        found = (
            f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        )
        raise DatasetError(f"{file.path}: b'data' is a {found}, expected uint8 of shape {expected}")
    if labels.shape != (CIFAR_RECORDS_PER_BATCH,) or labels.dtype.kind not in "iu":
        raise DatasetError(f"{file.path}: b'labels' must be {CIFAR_RECORDS_PER_BATCH} integers")
    _check_labels(file.path, labels, len(CLASSES["cifar10"]))
    return images.reshape(-1, *CIFAR_SHAPE), labels


def _download_cifar(root: Path) -> None:
    """Fetch and unpack the binary archive, adding only the batch files not already there."""
    md5 = DOWNLOADS["cifar10"][CIFAR_ARCHIVE]
    archive = fetch(CIFAR_ARCHIVE, MIRRORS["cifar10"], root, md5)
    checked = _CheckedFiles()
    with tempfile.TemporaryDirectory(dir=root, prefix=".unpack-") as tmp:
        extract_tar(archive, Path(tmp))
        unpacked = Path(tmp) / CIFAR_BIN
        if not unpacked.is_dir():
            raise DatasetError(f"{archive}: holds no {CIFAR_BIN}/ folder")
        (root / CIFAR_BIN).mkdir(exist_ok=True)
        for path in sorted(unpacked.iterdir()):
            dest = root / CIFAR_BIN / path.name
            if path.is_file() and not dest.exists():
                os.replace(path, dest)
                checked.add(dest, unpacked_from=f"{CIFAR_ARCHIVE} md5 {md5}")


# ---- checks shared by all formats ----


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DatasetError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside 0..{num_classes - 1}")


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtsnn"


class _CheckedFiles:
    """Files that passed a check, keyed by absolute path and valid while their size and
    modification time stay the same. Kept in the user cache, not beside the data, because
    data folders may be read-only."""

    def __init__(self):
        self.path = _user_cache() / "verified.json"
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        if not isinstance(self.entries, dict):
            self.entries = {}

    def verify(self, file: _File) -> bool:
        """Whether ``file`` is verified; DatasetError if its known checksum does not match."""
        expected = CHECKSUMS.get(file.key)
        entry = self._entry(file.path, file.stat)
        if expected is None:
            return "unpacked_from" in entry
        # A pickle is hashed every time: a cached verdict would pass a crafted file given
        # the size and modification time of the one checked
        if entry.get("md5") == expected and not _is_pickle(file):
            return True
        actual = md5_of(file.content)
        if actual != expected:
            raise DatasetError(
                f"{file.path}: checksum mismatch: the md5 of its "
                f"{'uncompressed ' if file.path.suffix == '.gz' else ''}content is {actual}, "
                f"expected {expected}. The file is damaged or not the official release; "
                f"delete it and load with download=True, or replace it."
            )
        self.add(file.path, stat=file.stat, md5=expected)
        return True

    def _entry(self, path: Path, stat: os.stat_result) -> dict:
        """What is recorded for ``path``, if it still has the size and time it had then."""
        entry = self.entries.get(str(path.resolve()))
        if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return entry
        return {}

    def add(self, path: Path, stat: os.stat_result | None = None, **proof: str) -> None:
        stat = stat or path.stat()
        self.entries[str(path.resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **proof}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, [json.dumps(self.entries, indent=1).encode()])
        except OSError:
            pass  # an unwritable cache only means checking again next time


# ---- batches on the device ----

_HOLD_OUT_KEY = 0x5EED_0F_5A  # a key of its own, so no training seed's stream coincides with it


# Elastic distortion (Simard, Steinkraus & Platt 2003, "Best practices for convolutional neural
# networks applied to visual document analysis", ICDAR): the random displacement field is
# smoothed by a Gaussian of this many pixels, their sigma for 28 x 28 digits.
ELASTIC_SIGMA = 4.0


def elastic_warp(images: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """``images`` [N, C, H, W] resampled at displaced points: output pixel (y, x) of image n is
    the input at (y + displacement[n, 1, y, x], x + displacement[n, 0, y, x]), in pixels,
    bilinearly interpolated, with black (0) outside the image. Returns float32.

    >>> image = torch.arange(4.0).view(1, 1, 1, 4)
    >>> elastic_warp(image, torch.tensor([0.5, 0.0]).view(1, 2, 1, 1).expand(1, 2, 1, 4))
    tensor([[[[0.5000, 1.5000, 2.5000, 1.5000]]]])
    """
    n, _, height, width = images.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=images.device), torch.arange(width, device=images.device), indexing="ij"
    )
    x = xs + displacement[:, 0]  # N x H x W, in pixels
    y = ys + displacement[:, 1]
    # without align_corners, grid_sample reads -1 and 1 as the outer edges of the first and last
    # pixels, so pixel centre x sits at (2x + 1) / width - 1 (any size, 1 included)
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)
    return F.grid_sample(images.float(), grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False)


def elastic_displacement(n: int, height: int, width: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """A random displacement field [n, 2, height, width] for :func:`elastic_warp`: uniform noise
    in [-1, 1) per pixel and axis, blurred by a Gaussian of ELASTIC_SIGMA pixels (zero beyond the
    border, so the field is weaker there) and multiplied by ``alpha``, drawn on the CPU from
    ``generator``. The blur leaves the noise a standard deviation of about 0.04 inside a 28 x 28
    image, so alpha 34 moves pixels by about 1.3 (measured)."""
    noise = torch.rand(n, 2, height, width, generator=generator) * 2 - 1
    # The Gaussian is separable: blur the columns, then the rows, each a banded matrix (as fast
    # as it gets at this size: conv2d with 25-tap kernels took 20x longer, measured)
    return alpha * (_gaussian_band(height) @ noise @ _gaussian_band(width).T)


def affine_displacement(angles: torch.Tensor, scales: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The displacement field [n, 2, height, width] for :func:`elastic_warp` of a rotation by
    ``angles`` [n] (radians, counter-clockwise as the image is shown, rows running down) and a
    scaling by ``scales`` [n] about the image centre c: output pixel p reads the input at
    ``c + R(-angle) (p - c) / scale``, so the content turns by ``angle`` and grows by ``scale``.

    >>> field = affine_displacement(torch.tensor([0.0]), torch.tensor([2.0]), 1, 3)
    >>> field[0, 0]  # x: the outer pixels read halfway towards the centre (zoomed in 2x)
    tensor([[ 0.5000,  0.0000, -0.5000]])
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    x, y = xs - (width - 1) / 2, ys - (height - 1) / 2  # H x W, from the centre
    cos, sin = (torch.cos(angles) / scales)[:, None, None], (torch.sin(angles) / scales)[:, None, None]
    # R(-a) with y pointing down: a counter-clockwise turn on screen is clockwise in (x, y)
    source_x = cos * x - sin * y
    source_y = sin * x + cos * y
    return torch.stack([source_x - x, source_y - y], dim=1)


def _gaussian_band(size: int) -> torch.Tensor:
    """[size, size]: row i holds the Gaussian of ELASTIC_SIGMA pixels centred on pixel i, cut at
    3 sigma and normalised before the border cuts it (as a convolution with zero padding)."""
    radius = int(3 * ELASTIC_SIGMA)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0) / ELASTIC_SIGMA) ** 2)
    taps /= taps.sum()
    offset = torch.arange(size)[None, :] - torch.arange(size)[:, None]
    return torch.where(offset.abs() <= radius, taps[(offset + radius).clamp(0, 2 * radius)], 0.0)


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a hash of ``key``, so that neighbouring keys give
    unrelated streams and results are the same whatever the training device."""
    state = np.random.SeedSequence(key).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class DeviceLoader:
    """Batches of a split held whole on ``device`` as uint8, augmented and normalised there.

    Training (``train=True``): each epoch visits the examples in a fresh random order, and
    each image gets a random crop (zero-pad by ``crop_padding`` pixels, then cut back to its
    size at an independent offset; 0 disables), with ``flip`` a random horizontal flip, and
    with ``cutout`` > 0 a black ``cutout`` x ``cutout`` square centred on a random pixel,
    clipped at the border (Cutout, DeVries & Taylor 2017, arXiv:1708.04552), and with
    ``elastic`` > 0 an elastic distortion of that strength (the ``alpha`` of
    :func:`elastic_displacement`), and with ``rotation`` or ``zoom`` > 0 a rotation by up to
    ``rotation`` degrees and a scaling by 1 +- up to ``zoom`` about the centre
    (:func:`affine_displacement`, each drawn uniformly per image); both distortions are applied
    last, in one resampling along the sum of their fields. Padding and cut-out pixels are black raw
    pixels, as torchvision's RandomCrop(padding=...) before Normalize. With ``mixup`` > 0,
    :meth:`mix` blends a training batch with itself (the loss must be blended alike, so the
    caller applies it).
    Test: examples in order, no augmentation. Every batch is then turned into float32
    ``(x / 255 - mean) / std`` with the data set's NORMALISATION unless ``mean``/``std`` given.

    All randomness is a pure function of (seed, epoch, batch index), so ``epoch(e,
    start_batch=k)`` resumes an interrupted epoch with exactly the batches it would have had.
    Iterating the loader itself runs epoch 0, then 1, and so on. A batch is ``(float32
    images [B, C, H, W], int64 labels [B])``.

    >>> digits = Dataset("mnist", "train", torch.zeros(10, 1, 28, 28, dtype=torch.uint8),
    ...                  torch.arange(10), [str(i) for i in range(10)], ())
    >>> images, labels = next(iter(DeviceLoader(digits, 4, train=False).epoch(0)))
    >>> images.shape, labels.tolist()
    (torch.Size([4, 1, 28, 28]), [0, 1, 2, 3])
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        train: bool,
        device: str | torch.device = "cpu",
        seed: int = 0,
        crop_padding: int = 0,
        flip: bool = False,
        cutout: int = 0,
        elastic: float = 0.0,
        rotation: float = 0.0,
        zoom: float = 0.0,
        mixup: float = 0.0,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        drop_last: bool = False,
    ):
        for name, value, least in (
            ("batch_size", batch_size, 1),
            ("seed", seed, 0),
            ("crop_padding", crop_padding, 0),
            ("cutout", cutout, 0),
            ("elastic", elastic, 0),
            ("rotation", rotation, 0),
            ("zoom", zoom, 0),  # and < 1, below
            ("mixup", mixup, 0),
        ):
            if not value >= least or not math.isfinite(value):
                raise ValueError(f"DeviceLoader: {name}={value} (need >= {least})")
        if zoom >= 1:  # a scale of 1 - zoom would reach 0 (no image) or mirror it
            raise ValueError(f"DeviceLoader: zoom={zoom} (need 0 <= zoom < 1)")
        self.images = dataset.images.to(device)
        self.labels = dataset.labels.to(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.crop_padding, self.flip, self.cutout, self.elastic = crop_padding, flip, cutout, elastic
        self.rotation, self.zoom, self.mixup = rotation, zoom, mixup
        self.drop_last = drop_last
        if (mean is None) != (std is None):
            raise ValueError(f"DeviceLoader: mean={mean} and std={std}: give both or neither (the dataset's)")
        if mean is None or std is None:
            mean, std = NORMALISATION[dataset.name]
        channels_in = dataset.images.shape[1]
        if len(mean) != channels_in or len(std) != channels_in or not all(s > 0 for s in std):
            raise ValueError(
                f"DeviceLoader: mean={tuple(mean)}, std={tuple(std)} for {channels_in}-channel images "
                f"(need one value per channel, std > 0)"
            )
        channels = (1, -1, 1, 1)
        self.mean = torch.tensor(mean, device=device).view(channels)
        self.std = torch.tensor(std, device=device).view(channels)
        self.next_epoch = 0

    def __len__(self) -> int:
        full, rest = divmod(len(self.labels), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.next_epoch += 1
        return self.epoch(self.next_epoch - 1)

    def epoch(
        self, epoch: int, start_batch: int = 0, augment: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) for batches ``start_batch``.. of epoch ``epoch``; a training epoch
        with ``augment=False`` keeps its random order but leaves the images as they are."""
        if epoch < 0 or not 0 <= start_batch <= len(self):
            raise ValueError(
                f"epoch={epoch}, start_batch={start_batch}: need epoch >= 0 and 0 <= start_batch <= {len(self)}"
            )
        return self._batches(epoch, start_batch, augment)

    def _batches(self, epoch: int, start_batch: int, augment: bool):
        order = None
        if self.train:
            order = torch.randperm(len(self.labels), generator=_generator(self.seed, epoch, 0, 0))
            order = order.to(self.images.device)
        for batch in range(start_batch, len(self)):
            window = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            index = window if order is None else order[window]
            images, labels = self.images[index], self.labels[index]
            if (
                self.train
                and augment
                and (self.crop_padding or self.flip or self.cutout or self.elastic or self.rotation or self.zoom)
            ):
                images = self._augment(images, _generator(self.seed, epoch, 1, batch))
            yield images.float().div_(255).sub_(self.mean).div_(self.std), labels

    def mix(self, images: torch.Tensor, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Mixup (Zhang et al. 2018, arXiv:1710.09412) of batch ``batch`` of epoch ``epoch``:
        ``(lam images + (1 - lam) images[partner], partner, lam)``, with ``partner`` a random
        permutation of the batch and one ``lam`` drawn from Beta(mixup, mixup), folded to
        ``max(lam, 1 - lam)`` (the same distribution, symmetric) so that each image outweighs its
        partner and its own label is the one to count a prediction against. A loss ``L`` becomes
        ``lam L(labels) + (1 - lam) L(labels[partner])``. Blending normalised images equals
        normalising blended ones (the weights sum to 1). Like every augmentation, a pure function
        of (seed, epoch, batch), so a resumed epoch mixes as the uninterrupted one did.

        >>> digits = Dataset("mnist", "train", torch.zeros(4, 1, 2, 2, dtype=torch.uint8),
        ...                  torch.arange(4), [str(i) for i in range(4)], ())
        >>> loader = DeviceLoader(digits, 4, train=True, mixup=0.2)
        >>> images = torch.arange(4.0).view(4, 1, 1, 1)
        >>> mixed, partner, lam = loader.mix(images, epoch=0, batch=0)
        >>> 0.5 <= lam <= 1, sorted(partner.tolist())
        (True, [0, 1, 2, 3])
        >>> torch.allclose(mixed, lam * images + (1 - lam) * images[partner])
        True
        """
        if not self.mixup:
            raise ValueError("DeviceLoader.mix: this loader has mixup=0")
        rng = np.random.default_rng(np.random.SeedSequence((self.seed, epoch, 2, batch)))
        lam = float(rng.beta(self.mixup, self.mixup))
        lam = max(lam, 1 - lam)
        partner = torch.from_numpy(rng.permutation(len(images))).to(images.device)
        return images.mul(lam).add_(images[partner], alpha=1 - lam), partner, lam

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Crop and flip every image at once: gather each image's rows, then its columns,
        from the padded batch at per-image offsets (columns reversed for flipped images);
        then black out each image's cut-out square, then distort. The cut-outs draw their
        centres after the crops and flips, the elastic distortions their fields after both, and
        the affine ones their angles and scales last, so runs without them see the random
        numbers they always did."""
        n, channels, height, width = images.shape
        pad = self.crop_padding
        top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = top[:, None] + torch.arange(height)  # n x height, in the padded image
        cols = left[:, None] + torch.arange(width)  # n x width
        if self.flip:
            flipped = torch.rand(n, generator=generator) < 0.5
            cols = torch.where(flipped[:, None], cols.flip(1), cols)
        padded = F.pad(images, (pad, pad, pad, pad))
        rows = rows.to(images.device)[:, None, :, None].expand(n, channels, height, padded.shape[3])
        cols = cols.to(images.device)[:, None, None, :].expand(n, channels, height, width)
        images = padded.gather(2, rows).gather(3, cols)
        if self.cutout:
            top = torch.randint(0, height, (n, 1), generator=generator) - self.cutout // 2
            left = torch.randint(0, width, (n, 1), generator=generator) - self.cutout // 2
            inside_rows = (torch.arange(height) >= top) & (torch.arange(height) < top + self.cutout)  # n x height
            inside_cols = (torch.arange(width) >= left) & (torch.arange(width) < left + self.cutout)  # n x width
            square = (inside_rows[:, :, None] & inside_cols[:, None, :]).to(images.device)
            images = images.masked_fill(square[:, None], 0)
        field = elastic_displacement(n, height, width, self.elastic, generator) if self.elastic else None
        if self.rotation or self.zoom:
            angles = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(self.rotation)
            scales = 1 + (torch.rand(n, generator=generator) * 2 - 1) * self.zoom
            affine = affine_displacement(angles, scales, height, width)
            field = affine if field is None else field + affine
        if field is not None:
            images = elastic_warp(images, field.to(images.device))
        return images
