"""mtsnn.data: reading each format from small hand-made files with known contents, every
integrity check, and the device loader's crops, flips, order and resumability."""

import gzip
import hashlib
import math
import os
import pickle
import re
import struct
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from mtsnn import data
from mtsnn.data import DatasetError, DeviceLoader, UnverifiedDataWarning
from runs import SHARED


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Keep the checksum cache and default data root out of the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MTSNN_DATA", raising=False)


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


def idx(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes, written from the format's description."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, images, labels, *, gz=True, split="train", trusted=True, monkeypatch=None):
    """Write an MNIST split; with ``trusted``, register its checksums as the known ones."""
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    stems = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }[split]
    paths = []
    for stem, content in zip(
        stems,
        (images if isinstance(images, bytes) else idx(images), labels if isinstance(labels, bytes) else idx(labels)),
    ):
        path = folder / (stem + ".gz" if gz else stem)
        path.write_bytes(gzip.compress(content) if gz else content)
        paths.append(path)
        if trusted:
            monkeypatch.setitem(data.CHECKSUMS, f"MNIST/raw/{stem}", md5(content))
    return paths


def three_digits():
    """Three 28x28 images, each with a few pixels set at known places, and their labels."""
    images = np.zeros((3, 28, 28), np.uint8)
    images[0, 0, 0] = 255
    images[1, 27, 0] = 128
    images[2, 5, 27] = 7
    return images, np.array([3, 1, 9], np.uint8)


# ---- MNIST-style IDX files ----


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_with_their_exact_values(tmp_path, monkeypatch, gz):
    images, labels = three_digits()
    paths = write_mnist(tmp_path, images, labels, gz=gz, monkeypatch=monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = data.load("mnist", "train", root=tmp_path)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (3, 1, 28, 28)
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [3, 1, 9]
    assert ds.images.sum().item() == 255 + 128 + 7
    assert (ds.images[0, 0, 0, 0], ds.images[1, 0, 27, 0], ds.images[2, 0, 5, 27]) == (255, 128, 7)
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.source == tuple(paths) and ds.verified and len(ds) == 3


def test_test_split_and_uncompressed_copy_preferred(tmp_path, monkeypatch):
    images, labels = three_digits()
    write_mnist(tmp_path, images, labels, split="test", monkeypatch=monkeypatch)
    raw = write_mnist(tmp_path, images, labels, split="test", gz=False, monkeypatch=monkeypatch)
    ds = data.load("mnist", "test", root=tmp_path)
    assert ds.source == tuple(raw) and ds.labels.tolist() == [3, 1, 9]


def test_fashion_mnist_reads_its_own_folder(tmp_path, monkeypatch):
    images, labels = three_digits()
    folder = tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx(images))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx(labels))
    monkeypatch.setitem(data.CHECKSUMS, "FashionMNIST/raw/t10k-images-idx3-ubyte", md5(idx(images)))
    monkeypatch.setitem(data.CHECKSUMS, "FashionMNIST/raw/t10k-labels-idx1-ubyte", md5(idx(labels)))
    ds = data.load("fashion-mnist", "test", root=tmp_path)
    assert ds.classes[9] == "Ankle boot" and ds.labels.tolist() == [3, 1, 9] and ds.verified


def test_file_without_known_checksum_loads_flagged_unverified(tmp_path, monkeypatch):
    images, labels = three_digits()
    paths = write_mnist(tmp_path, images, labels, trusted=False)
    monkeypatch.setattr(data, "CHECKSUMS", {})
    with pytest.warns(UnverifiedDataWarning, match="train-images-idx3-ubyte.gz"):
        ds = data.load("mnist", "train", root=tmp_path)
    assert not ds.verified and ds.unverified == tuple(paths)
    assert "UNVERIFIED" in repr(ds)


def test_real_checksums_reject_a_lookalike(tmp_path):
    images, labels = three_digits()
    write_mnist(tmp_path, images, labels, trusted=False)  # keeps the real MNIST md5s
    with pytest.raises(
        DatasetError,
        match=r"train-images-idx3-ubyte\.gz: checksum mismatch.*"
        r"6bbc9ace898e44ae57da46a324031adb",
    ):
        data.load("mnist", "train", root=tmp_path)


def test_checksum_is_computed_once_then_cached_until_the_file_changes(tmp_path, monkeypatch):
    images, labels = three_digits()
    paths = write_mnist(tmp_path, images, labels, monkeypatch=monkeypatch)
    hashed = []
    real_md5_of = data.md5_of
    monkeypatch.setattr(data, "md5_of", lambda content: hashed.append(1) or real_md5_of(content))
    data.load("mnist", "train", root=tmp_path)
    assert len(hashed) == 2
    assert (tmp_path / "cache" / "mtsnn" / "verified.json").is_file()
    data.load("mnist", "train", root=tmp_path)
    assert len(hashed) == 2
    os.utime(paths[1], ns=(1, 1))
    data.load("mnist", "train", root=tmp_path)
    assert len(hashed) == 3


def test_checksum_is_checked_before_the_structure(tmp_path):
    write_mnist(tmp_path, b"\x00\x00\x08\x01" + idx(DIGITS)[4:], DIGIT_LABELS, trusted=False)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz: checksum mismatch"):
        data.load("mnist", "train", root=tmp_path)  # not "magic number": never parsed


def test_checksum_cache_survives_an_unwritable_cache_folder(tmp_path, monkeypatch):
    images, labels = three_digits()
    write_mnist(tmp_path, images, labels, monkeypatch=monkeypatch)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    assert data.load("mnist", "train", root=tmp_path).verified


DIGITS, DIGIT_LABELS = three_digits()
BAD_IDX = {  # images, labels, what the error says
    "wrong magic": (
        b"\x00\x00\x08\x01" + idx(DIGITS)[4:],
        DIGIT_LABELS,
        "magic number is 0x00000801, expected 0x00000803",
    ),
    "float type": (b"\x00\x00\x0d\x03" + idx(DIGITS)[4:], DIGIT_LABELS, "magic number"),
    "27 rows": (np.zeros((3, 27, 28)), DIGIT_LABELS, "images are 27x28, expected 28x28"),
    "too few pixels": (idx(DIGITS)[:-1], DIGIT_LABELS, "promises 2352 bytes .* but 2351 follow"),
    "extra bytes": (idx(DIGITS) + b"\x00", DIGIT_LABELS, "but 2353 follow"),
    "empty file": (b"", DIGIT_LABELS, "too short for an IDX header"),
    "more labels": (DIGITS, np.array([1, 2, 3, 4]), "holds 4 labels but .* holds 3 images"),
    "label 10": (DIGITS, np.array([1, 10, 3]), "label 10 at index 1 is outside 0..9"),
}


@pytest.mark.parametrize("problem", BAD_IDX)
def test_malformed_idx_files_raise(tmp_path, monkeypatch, problem):
    images, labels, message = BAD_IDX[problem]
    monkeypatch.setattr(data, "CHECKSUMS", {})  # the structure checks alone must catch these
    write_mnist(tmp_path, images, labels, gz=False, trusted=False)
    with pytest.raises(DatasetError, match=message):
        data.load("mnist", "train", root=tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "one byte changed"])
def test_damaged_gzip_raises(tmp_path, monkeypatch, damage):
    monkeypatch.setattr(data, "CHECKSUMS", {})
    images = (np.arange(3 * 28 * 28) * 7919 % 251).reshape(3, 28, 28)  # compresses poorly
    path = write_mnist(tmp_path, images, DIGIT_LABELS, trusted=False)[0]
    packed = path.read_bytes()
    middle = len(packed) // 2
    path.write_bytes(
        packed[:middle]
        if damage == "truncated"
        else packed[:middle] + bytes([packed[middle] ^ 0xFF]) + packed[middle + 1 :]
    )
    with pytest.raises(DatasetError, match="images-idx3-ubyte.gz: corrupt or truncated gzip"):
        data.load("mnist", "train", root=tmp_path)


def test_missing_files_name_the_file_the_folder_and_the_remedy(tmp_path):
    with pytest.raises(DatasetError) as error:
        data.load("mnist", "test", root=tmp_path)
    message = str(error.value)
    assert "t10k-images-idx3-ubyte" in message and str(tmp_path / "MNIST" / "raw") in message
    assert "download=True" in message


def test_root_comes_from_argument_then_environment_then_user_cache(tmp_path, monkeypatch):
    assert data.data_root() == tmp_path / "cache" / "mtsnn"
    monkeypatch.setenv("MTSNN_DATA", str(tmp_path / "env"))
    assert data.data_root() == tmp_path / "env"
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"
    images, labels = three_digits()
    write_mnist(tmp_path / "env", images, labels, monkeypatch=monkeypatch)
    assert data.load("mnist", "train").source[0].parent == tmp_path / "env" / "MNIST" / "raw"


def test_unknown_names_are_usage_errors():
    with pytest.raises(ValueError, match="cifar10"):
        data.load("cifar100", "train")
    with pytest.raises(ValueError, match="test"):
        data.load("mnist", "validation")


def test_subset_keeps_the_first_examples(tmp_path, monkeypatch):
    images, labels = three_digits()
    write_mnist(tmp_path, images, labels, monkeypatch=monkeypatch)
    small = data.load("mnist", "train", root=tmp_path).subset(2)
    assert len(small) == 2 and small.labels.tolist() == [3, 1] and small.images.shape[0] == 2


# ---- CIFAR-10, binary and python layouts ----


def cifar_records(labels):
    """Images whose pixel (c, y, x) of image i is (i + 2c + y + x) mod 256, and one record per
    image: the label byte, then the red, green and blue planes, row-major."""
    i, c, y, x = np.meshgrid(np.arange(len(labels)), np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    images = ((i + 2 * c + y + x) % 256).astype(np.uint8)
    records = b"".join(bytes([label]) + images[n].tobytes() for n, label in enumerate(labels))
    return images, records


@pytest.fixture
def two_record_batches(monkeypatch):
    monkeypatch.setattr(data, "CIFAR_RECORDS_PER_BATCH", 2)


def test_cifar_binary_layout(tmp_path, two_record_batches):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    images, records = cifar_records([7, 0])
    (folder / "test_batch.bin").write_bytes(records)
    with pytest.warns(UnverifiedDataWarning, match="test_batch.bin"):
        ds = data.load("cifar10", "test", root=tmp_path)
    assert ds.images.shape == (2, 3, 32, 32) and ds.labels.tolist() == [7, 0]
    assert ds.images[1, 2, 3, 4].item() == 1 + 4 + 3 + 4
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert ds.classes[7] == "horse" and ds.unverified == (folder / "test_batch.bin",)


def test_cifar_train_split_concatenates_five_batches_in_order(tmp_path, two_record_batches):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for n in range(1, 6):
        (folder / f"data_batch_{n}.bin").write_bytes(cifar_records([n, n + 1])[1])
    with pytest.warns(UnverifiedDataWarning):
        ds = data.load("cifar10", "train", root=tmp_path)
    assert ds.labels.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert [p.name for p in ds.source] == [f"data_batch_{n}.bin" for n in range(1, 6)]


@pytest.mark.parametrize(
    "content, message",
    [
        (cifar_records([1, 2])[1][:-1], "not a whole number of 3073-byte records"),
        (cifar_records([1, 2, 3])[1], "3 records, expected 2"),
        (cifar_records([1, 10])[1], "label 10 at index 1 is outside 0..9"),
    ],
)
def test_damaged_cifar_binary_batches_raise(tmp_path, two_record_batches, content, message):
    (tmp_path / "cifar-10-batches-bin").mkdir()
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        data.load("cifar10", "test", root=tmp_path)


def python_batch(images, labels, numpy_module="numpy.core.multiarray"):
    """A batch shaped like the official python files: a dict with bytes keys holding a uint8
    array and lists. Protocol 3 names globals as plain text, so the module spelling of the
    array rebuilder can be set to what numpy 1 (the official files) or numpy 2 writes."""
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": list(labels),
        b"data": images.reshape(len(images), -1),
        b"filenames": [b"a.png"] * len(labels),
    }
    return re.sub(rb"cnumpy\._?core\.multiarray\n", f"c{numpy_module}\n".encode(), pickle.dumps(batch, protocol=3))


@pytest.mark.parametrize("numpy_module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_cifar_python_layout(tmp_path, monkeypatch, two_record_batches, numpy_module):
    images, _ = cifar_records([3, 5])
    content = python_batch(images, [3, 5], numpy_module)
    assert f"c{numpy_module}\n_reconstruct".encode() in content
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    monkeypatch.setitem(data.CHECKSUMS, "cifar-10-batches-py/test_batch", md5(content))
    ds = data.load("cifar10", "test", root=tmp_path)
    assert ds.verified and ds.labels.tolist() == [3, 5]
    assert torch.equal(ds.images, torch.from_numpy(images))


def test_a_python_batch_is_hashed_at_every_load(tmp_path, monkeypatch, two_record_batches):
    images, _ = cifar_records([3, 5])
    content = python_batch(images, [3, 5])
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    monkeypatch.setitem(data.CHECKSUMS, "cifar-10-batches-py/test_batch", md5(content))
    hashed = []
    real_md5_of = data.md5_of
    monkeypatch.setattr(data, "md5_of", lambda content: hashed.append(1) or real_md5_of(content))
    for _ in range(2):
        assert data.load("cifar10", "test", root=tmp_path).verified
    assert len(hashed) == 2  # the cache, trusted for IDX files, is not for pickles


class RunsACommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_crafted_pickle_cannot_run_code(tmp_path, monkeypatch, two_record_batches):
    marker = tmp_path / "pwned"
    content = pickle.dumps({b"data": RunsACommand(f"touch {marker}"), b"labels": [0, 0]})
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    # Not the official file: refused on its checksum, before any unpickling
    with pytest.raises(DatasetError, match="test_batch: checksum mismatch"):
        data.load("cifar10", "test", root=tmp_path)
    # Even a file that passed the checksum may build nothing but CIFAR's plain contents
    monkeypatch.setitem(data.CHECKSUMS, "cifar-10-batches-py/test_batch", md5(content))
    with pytest.raises(DatasetError, match="refusing to load global (posix|nt).system"):
        data.load("cifar10", "test", root=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "batch, message",
    [
        ([1, 2, 3], "expected a dict with b'data' and b'labels'"),
        ({b"data": np.zeros((2, 3072), np.int32), b"labels": [0, 1]}, "int32 array"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "must be 2 integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}, "label -1 at index 1"),
    ],
)
def test_malformed_python_batches_raise(tmp_path, monkeypatch, two_record_batches, batch, message):
    content = pickle.dumps(batch, protocol=3)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    monkeypatch.setitem(data.CHECKSUMS, "cifar-10-batches-py/test_batch", md5(content))
    with pytest.raises(DatasetError, match=message):
        data.load("cifar10", "test", root=tmp_path)


def test_missing_cifar_names_both_layouts(tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"test_batch\.bin not found .*cifar-10-batches-py"
        r".*download=True",
    ):
        data.load("cifar10", "test", root=tmp_path)


# ---- the device loader ----


def dataset_of(images, labels=None, name="mnist"):
    images = torch.as_tensor(images, dtype=torch.uint8)
    labels = torch.zeros(len(images), dtype=torch.int64) if labels is None else labels
    return data.Dataset(name, "train", images, labels, list(data.CLASSES[name]), ())


def as_pixels(batch):
    """Undo mean 0, std 1 normalisation: back to integer pixel values."""
    return (batch * 255).round().to(torch.int64)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"batch_size": 0}, "batch_size=0 (need >= 1)"),
        ({"seed": -1}, "seed=-1 (need >= 0)"),
        ({"crop_padding": -2}, "crop_padding=-2 (need >= 0)"),
        ({"cutout": -1}, "cutout=-1 (need >= 0)"),
        ({"elastic": -1.0}, "elastic=-1.0 (need >= 0)"),
        ({"elastic": float("nan")}, "elastic=nan (need >= 0)"),
        ({"rotation": -5.0}, "rotation=-5.0 (need >= 0)"),
        ({"zoom": float("nan")}, "zoom=nan (need >= 0)"),
        ({"zoom": 1.0}, "zoom=1.0 (need 0 <= zoom < 1)"),
        ({"mean": (0.5,)}, "mean=(0.5,) and std=None: give both or neither"),
        ({"mean": (0.5, 0.5, 0.5), "std": (1.0, 1.0, 1.0)}, "for 1-channel images (need one value per channel"),
        ({"mean": (0.5,), "std": (0.0,)}, "std=(0.0,) for 1-channel images (need one value per channel, std > 0)"),
    ],
)
def test_loader_settings_out_of_range_are_named(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        data.DeviceLoader(dataset_of(torch.zeros(4, 1, 2, 2)), **{"batch_size": 2, "train": True, **setting})


@pytest.mark.parametrize("epoch, start_batch", [(-1, 0), (0, 3), (0, -1)])
def test_an_epoch_or_start_batch_out_of_range_is_named(epoch, start_batch):
    loader = data.DeviceLoader(dataset_of(torch.zeros(4, 1, 2, 2)), batch_size=2, train=True)  # 2 batches
    with pytest.raises(ValueError, match=re.escape(f"epoch={epoch}, start_batch={start_batch}: need epoch >= 0")):
        loader.epoch(epoch, start_batch)


# All nine crops of [[10, 20], [30, 40]] zero-padded by one pixel, by hand
CROPS = [
    [[0, 0], [0, 10]],
    [[0, 0], [10, 20]],
    [[0, 0], [20, 0]],
    [[0, 10], [0, 30]],
    [[10, 20], [30, 40]],
    [[20, 0], [40, 0]],
    [[0, 30], [0, 0]],
    [[30, 40], [0, 0]],
    [[40, 0], [0, 0]],
]
MIRRORED = [[row[::-1] for row in crop] for crop in CROPS]


def crops_seen(flip):
    ds = dataset_of(torch.tensor([[[10, 20], [30, 40]]]).expand(400, 1, 2, 2))
    loader = DeviceLoader(ds, 50, train=True, crop_padding=1, flip=flip, mean=(0.0,), std=(1.0,))
    return [as_pixels(image[0]).tolist() for images, _ in loader for image in images]


def test_random_crops_are_the_hand_computed_ones_and_all_occur():
    seen = crops_seen(flip=False)
    assert all(crop in CROPS for crop in seen)
    assert all(crop in seen for crop in CROPS)


def test_flips_mirror_about_half_of_the_crops():
    seen = crops_seen(flip=True)
    assert all(crop in CROPS or crop in MIRRORED for crop in seen)
    mirrored = sum(crop in MIRRORED and crop not in CROPS for crop in seen)
    assert 100 < mirrored < 250  # of 400; mirror-symmetric crops don't count


def test_cutout_blacks_out_one_square_per_image_clipped_at_the_border_and_leaves_the_crops_as_they_were():
    pixels = torch.randint(1, 256, (600, 1, 8, 8))  # no black pixel of their own

    def pairs(crop_padding):  # (without, with) cut-outs, as pixels
        make = partial(DeviceLoader, dataset_of(pixels), 100, train=True, crop_padding=crop_padding, flip=True)
        for (before, _), (after, _) in zip(make(mean=(0.0,), std=(1.0,)), make(cutout=4, mean=(0.0,), std=(1.0,))):
            yield as_pixels(before[:, 0]), as_pixels(after[:, 0])

    for before, after in pairs(crop_padding=1):  # the same crops and flips, some pixels blacked out
        changed = before != after
        assert changed.any() and torch.equal(after[changed], torch.zeros_like(after[changed]))
    sides = set()
    for before, after in pairs(crop_padding=0):
        for square in before != after:
            rows, cols = square.any(1).nonzero()[:, 0], square.any(0).nonzero()[:, 0]
            # a full rectangle: 4 x 4 centred on a pixel of the 8 x 8 image (rows c-2..c+1), clipped
            assert square.sum() == len(rows) * len(cols)  # with the next line: a full rectangle
            assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
            sides.add((len(rows), len(cols), rows[0].item() == 0, cols[0].item() == 0))
    # centre row 0 leaves 2 rows, 1 leaves 3, 2-6 all 4, and 7 (rows 5-7) 3; every kind occurs
    assert {(r, c) for r, c, _, _ in sides} == {(r, c) for r in (2, 3, 4) for c in (2, 3, 4)}
    assert (4, 4, False, False) in sides and (2, 2, True, True) in sides


def bilinear_reference(images, displacement):
    """elastic_warp by hand: each output pixel from its four neighbours around the displaced
    point, weighted by closeness, pixels outside the image black."""
    n, channels, height, width = images.shape
    out = torch.zeros(n, channels, height, width, dtype=torch.float64)
    for i in range(n):
        for y in range(height):
            for x in range(width):
                sy, sx = y + displacement[i, 1, y, x].item(), x + displacement[i, 0, y, x].item()
                y0, x0 = int(np.floor(sy)), int(np.floor(sx))
                for yy, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
                    for xx, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
                        if 0 <= yy < height and 0 <= xx < width:
                            out[i, :, y, x] += wy * wx * images[i, :, yy, xx].double()
    return out


@pytest.mark.parametrize("height, width", [(5, 6), (1, 4), (3, 1)])
def test_elastic_warp_samples_each_displaced_point_as_a_slow_bilinear_reference_does(height, width):
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 2, height, width), dtype=torch.uint8, generator=generator)
    displacement = torch.empty(3, 2, height, width).uniform_(-2.5, 2.5, generator=generator)
    warped = data.elastic_warp(images, displacement)
    torch.testing.assert_close(warped.double(), bilinear_reference(images, displacement), atol=1e-3, rtol=0)


def test_elastic_displacement_is_uniform_noise_blurred_by_a_three_sigma_gaussian_times_alpha():
    field = data.elastic_displacement(4, 20, 30, 7.0, torch.Generator().manual_seed(5))
    noise = torch.rand(4, 2, 20, 30, generator=torch.Generator().manual_seed(5)) * 2 - 1  # the same draws
    taps = torch.tensor([np.exp(-0.5 * (k / 4.0) ** 2) for k in range(-12, 13)])  # sigma 4, cut at 3 sigma
    kernel = torch.outer(taps, taps) / taps.sum() ** 2
    blurred = torch.nn.functional.conv2d(noise.reshape(8, 1, 20, 30), kernel[None, None].float(), padding=12)
    torch.testing.assert_close(field, 7.0 * blurred.reshape(4, 2, 20, 30), atol=1e-5, rtol=1e-4)


def test_elastic_distortion_keeps_the_crops_and_flips_and_bends_the_images():
    pixels = torch.randint(0, 256, (200, 1, 12, 12), generator=torch.Generator().manual_seed(2))
    make = partial(DeviceLoader, dataset_of(pixels), 50, train=True, crop_padding=1, flip=True, mean=(0.0,), std=(1.0,))
    # a vanishing distortion is the identity: the crops and flips draw the numbers they did without it
    for (plain, _), (tiny, _) in zip(make(), make(elastic=1e-6)):
        torch.testing.assert_close(tiny, plain, atol=1e-4, rtol=0)
    for (plain, _), (bent, _) in zip(make(), make(elastic=34.0)):
        moved = (bent - plain).abs().mean()  # in pixels / 255: random pixels differ by ~85/255 on average
        assert 0.1 < moved < 0.5
    again = [images for images, _ in make(elastic=34.0)]
    assert all(torch.equal(a, b) for a, b in zip(again, [images for images, _ in make(elastic=34.0)]))
    # alone (no crop, no flip) it still bends the training images, and never the test images
    alone = partial(DeviceLoader, dataset_of(pixels), 200, crop_padding=0, elastic=34.0, mean=(0.0,), std=(1.0,))
    (bent, _), (kept, _) = next(iter(alone(train=True))), next(iter(alone(train=False)))
    assert not (as_pixels(bent)[:, None] == pixels[None]).flatten(2).all(2).any()  # no image is any original
    assert torch.equal(as_pixels(kept), pixels)


def test_a_quarter_turn_moves_the_right_middle_pixel_to_the_top_middle_and_scaling_by_2_magnifies():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 4] = 1.0  # right of the centre (2, 2); rows run down
    turned = data.elastic_warp(image, data.affine_displacement(torch.tensor([math.pi / 2]), torch.ones(1), 5, 5))
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 0, 2] = 1.0  # counter-clockwise as shown: to the top
    torch.testing.assert_close(turned, expected, atol=1e-5, rtol=0)
    # scaling by 2 about the centre: the pixel one right of it lands two right, and its
    # neighbours read halfway between it and the centre (bilinear: 1/2 of it)
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 3] = 1.0
    grown = data.elastic_warp(image, data.affine_displacement(torch.zeros(1), torch.tensor([2.0]), 5, 5))
    assert grown[0, 0, 2].tolist() == [0.0, 0.0, 0.0, 0.5, 1.0]
    # a 30-degree turn: output pixel (x=4, y=2), 2 right of the centre, reads the input at the
    # centre plus R(-30)(2, 0) = (2 cos 30, 2 sin 30) = (1.732, 1.0), so it is displaced by (-0.268, 1.0)
    field = data.affine_displacement(torch.tensor([math.radians(30)]), torch.ones(1), 5, 5)
    torch.testing.assert_close(field[0, :, 2, 4], torch.tensor([1.7320508 - 2, 1.0]), atol=1e-5, rtol=0)


def test_rotation_and_zoom_keep_the_crops_flips_and_elastic_draws_and_bend_only_training_images():
    pixels = torch.randint(0, 256, (200, 1, 12, 12), generator=torch.Generator().manual_seed(3))
    make = partial(DeviceLoader, dataset_of(pixels), 50, train=True, crop_padding=1, flip=True, mean=(0.0,), std=(1.0,))
    # vanishing angles and scales are the identity: what came before draws the numbers it did
    for (plain, _), (tiny, _) in zip(make(elastic=10.0), make(elastic=10.0, rotation=1e-6, zoom=1e-7)):
        torch.testing.assert_close(tiny, plain, atol=1e-4, rtol=0)
    for (plain, _), (turned, _) in zip(make(), make(rotation=20.0, zoom=0.1)):
        assert 0.1 < (turned - plain).abs().mean() < 0.5  # random pixels differ by ~85/255 on average
    again = [images for images, _ in make(rotation=20.0)]
    assert all(torch.equal(a, b) for a, b in zip(again, [images for images, _ in make(rotation=20.0)]))
    alone = partial(DeviceLoader, dataset_of(pixels), 200, crop_padding=0, zoom=0.2, mean=(0.0,), std=(1.0,))
    (bent, _), (kept, _) = next(iter(alone(train=True))), next(iter(alone(train=False)))
    assert (as_pixels(bent) != pixels).flatten(1).any(1).float().mean() > 0.9
    assert torch.equal(as_pixels(kept), pixels)


def test_padding_is_black_before_normalisation():
    ds = dataset_of(torch.full((64, 1, 2, 2), 255))
    images, _ = next(iter(DeviceLoader(ds, 64, train=True, crop_padding=1)))
    black, white = (0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081
    torch.testing.assert_close(images.unique(), torch.tensor([black, white]))


def test_test_loader_keeps_order_and_only_normalises():
    pixels = torch.arange(10 * 3 * 2 * 2).reshape(10, 3, 2, 2) % 256
    ds = dataset_of(pixels, torch.arange(10) % 10, name="cifar10")
    loader = DeviceLoader(ds, 4, train=False, flip=True, crop_padding=4)
    batches = list(loader)
    assert len(loader) == 3 and [len(labels) for _, labels in batches] == [4, 4, 2]
    images = torch.cat([images for images, _ in batches])
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert images.dtype == torch.float32
    torch.testing.assert_close(images, (pixels / 255 - mean) / std)
    assert torch.cat([labels for _, labels in batches]).tolist() == list(range(10))


def test_drop_last():
    ds = dataset_of(torch.zeros(10, 1, 2, 2))
    assert len(DeviceLoader(ds, 4, train=True, drop_last=True)) == 2
    assert len(list(DeviceLoader(ds, 4, train=True, drop_last=True))) == 2
    assert len(DeviceLoader(ds, 5, train=True, drop_last=True)) == 2


def indices_loader(n=23, seed=0):
    """Each image is filled with its own index, each label is index mod 10."""
    ds = dataset_of(torch.arange(n).view(n, 1, 1, 1).expand(n, 1, 2, 2), torch.arange(n) % 10)
    return DeviceLoader(ds, 5, train=True, seed=seed, crop_padding=0, mean=(0.0,), std=(1.0,))


def epoch_order(batches):
    return torch.cat([as_pixels(images[:, 0, 0, 0]) for images, _ in batches]).tolist()


def test_each_epoch_is_a_fresh_permutation_with_labels_following_images():
    loader = indices_loader()
    orders = [epoch_order(loader.epoch(e)) for e in range(3)]
    assert all(sorted(order) == list(range(23)) for order in orders)
    assert orders[0] != orders[1] != orders[2] and orders[0] != list(range(23))
    for images, labels in loader.epoch(0):
        assert torch.equal(labels, as_pixels(images[:, 0, 0, 0]) % 10)
    assert epoch_order(indices_loader(seed=1).epoch(0)) != orders[0]


def test_iterating_runs_successive_epochs():
    loader = indices_loader()
    assert [epoch_order(loader), epoch_order(loader)] == [epoch_order(loader.epoch(0)), epoch_order(loader.epoch(1))]


def batches_equal(a, b):
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def test_resuming_mid_epoch_gives_exactly_the_remaining_batches():
    generator = torch.Generator().manual_seed(0)
    ds = dataset_of(
        torch.randint(0, 256, (23, 3, 8, 8), generator=generator),
        torch.randint(0, 10, (23,), generator=generator),
        name="cifar10",
    )
    make = partial(DeviceLoader, ds, 5, train=True, seed=7, crop_padding=2, flip=True)
    loader = make()
    assert len(loader) == 5
    for epoch in (0, 3):
        whole = list(make().epoch(epoch))
        for start in (0, 1, 4, 5):
            assert batches_equal(list(loader.epoch(epoch, start_batch=start)), whole[start:])
    assert not batches_equal(list(loader.epoch(0)), list(loader.epoch(1)))
    with pytest.raises(ValueError):
        loader.epoch(0, start_batch=6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_batches_equal_cpu_batches():
    generator = torch.Generator().manual_seed(0)
    ds = dataset_of(torch.randint(0, 256, (300, 3, 32, 32), generator=generator), name="cifar10")
    cpu = list(DeviceLoader(ds, 128, train=True, seed=3, flip=True).epoch(2))
    cuda = list(DeviceLoader(ds, 128, train=True, device="cuda", seed=3, flip=True).epoch(2))
    assert cuda[0][0].device.type == "cuda"
    assert all(torch.allclose(a.cpu(), b) and torch.equal(la.cpu(), lb) for (a, la), (b, lb) in zip(cuda, cpu))


# ---- the real data sets, where this machine has them ----


def shared(path):
    if not (SHARED / path).exists():
        pytest.skip(f"no {SHARED / path}: set MTSNN_SHARED_DATA to a folder holding it")
    return SHARED


@pytest.mark.parametrize(
    "name, folder, counts, first_labels",
    [
        (
            "mnist",
            "MNIST",
            (
                [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
                [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
            ),
            [5, 0, 4, 1, 9, 2, 1, 3, 1, 4],
        ),
        ("fashion-mnist", "FashionMNIST", ([6000] * 10, [1000] * 10), [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]),
    ],
)
def test_real_idx_data_sets(monkeypatch, name, folder, counts, first_labels):
    root = shared(folder)
    train, test = data.load(name, "train", root), data.load(name, "test", root)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.verified and test.verified
    assert train.labels.bincount().tolist() == counts[0]
    assert test.labels.bincount().tolist() == counts[1]
    assert train.labels[:10].tolist() == first_labels
    # the shared folder is read-only, yet the second load need not hash again
    monkeypatch.setattr(data, "md5_of", lambda content: pytest.fail("hashed a checked file"))
    assert torch.equal(data.load(name, "test", root).images, test.images)


def test_cifar_proxy_loads_but_is_reported_unverified():
    proxy = os.environ.get("MTSNN_CIFAR_PROXY")
    if not proxy:
        pytest.skip(
            "set MTSNN_CIFAR_PROXY to a folder made by "
            f"{SHARED / 'cifar10-jpeg75' / 'to_binary.py'} (needs pillow; ~15 s)"
        )
    with pytest.warns(UnverifiedDataWarning):
        test = data.load("cifar10", "test", proxy)
    assert test.images.shape == (10000, 3, 32, 32) and not test.verified
    assert test.labels.bincount().tolist() == [1000] * 10
