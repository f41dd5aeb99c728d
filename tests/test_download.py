"""mtsnn.download and load(download=True) against an HTTP server on 127.0.0.1 that serves
good, corrupt, truncated, missing and slow files. Nothing here leaves the machine."""

import gzip
import hashlib
import io
import os
import socket
import stat
import struct
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from mtsnn import data
from mtsnn.download import DatasetError, extract_tar, fetch

GOOD = bytes(range(256)) * 40


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Keep the checksum cache and default data root out of the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MTSNN_DATA", raising=False)


class Server:
    """What each path serves: ("ok", body), ("truncated", body) sends half of a body while
    announcing all of it, ("slow", body) waits a second first; anything else is a 404."""

    def __init__(self):
        self.files, self.requests = {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                kind, body = server.files.get(self.path, ("missing", b""))
                if kind == "missing":
                    self.send_error(404)
                    return
                if kind == "slow":
                    time.sleep(1.0)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2] if kind == "truncated" else body)
                except ConnectionError:
                    pass  # the client gave up waiting: what the slow case is for

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def server():
    server = Server()
    yield server
    server.close()


def unused_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


# ---- fetch ----


def test_fetch_stores_a_good_file_and_shows_progress(tmp_path, server, capsys):
    server.files["/a/good.bin"] = ("ok", GOOD)
    path = fetch("good.bin", [server.url + "/a/"], tmp_path / "new", md5(GOOD), timeout=5)
    assert path == tmp_path / "new" / "good.bin" and path.read_bytes() == GOOD
    assert list(path.parent.iterdir()) == [path]  # no temporary file left over
    assert "good.bin" in capsys.readouterr().err
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() makes files: others may read it


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("ok", "md5 "),  # served intact but with other content: corrupt
        ("truncated", "truncated: received 5120 of 10240 bytes"),
        ("missing", "HTTP 404"),
        ("slow", "timed out"),
    ],
)
def test_fetch_gives_up_on_a_bad_mirror_and_leaves_nothing(tmp_path, server, kind, reason):
    server.files["/f.bin"] = (kind, GOOD[::-1] if kind == "ok" else GOOD)
    with pytest.raises(DatasetError) as error:
        fetch("f.bin", [server.url + "/"], tmp_path, md5(GOOD), timeout=0.3, progress=False)
    assert server.requests == ["/f.bin"]  # asked once, given up on: no retries
    message = str(error.value)
    assert f"{server.url}/f.bin: {reason}" in message
    assert "f.bin" in message.splitlines()[0] and str(tmp_path) in message and "by hand" in message
    assert list(tmp_path.iterdir()) == []


def test_fetch_tries_mirrors_in_order_until_one_serves_the_file_intact(tmp_path, server):
    server.files.update(
        {
            "/one/f.bin": ("missing", b""),
            "/two/f.bin": ("ok", b"corrupt"),
            "/three/f.bin": ("ok", GOOD),
            "/four/f.bin": ("ok", GOOD),
        }
    )
    mirrors = [unused_port_url()] + [f"{server.url}/{m}/" for m in ("one", "two", "three", "four")]
    fetch("f.bin", mirrors, tmp_path, md5(GOOD), timeout=5, progress=False)
    assert server.requests == ["/one/f.bin", "/two/f.bin", "/three/f.bin"]
    assert (tmp_path / "f.bin").read_bytes() == GOOD


def test_fetch_error_lists_every_address_tried(tmp_path, server):
    refused = unused_port_url()
    with pytest.raises(DatasetError) as error:
        fetch("f.bin", [refused, server.url + "/x/"], tmp_path, md5(GOOD), progress=False)
    lines = str(error.value).splitlines()
    assert lines[1].startswith(f"  {refused}f.bin: ") and "refused" in lines[1].lower()
    assert lines[2] == f"  {server.url}/x/f.bin: HTTP 404 Not Found"


def test_fetch_keeps_a_good_file_and_replaces_a_bad_one(tmp_path, server):
    server.files["/f.bin"] = ("ok", GOOD)
    (tmp_path / "f.bin").write_bytes(GOOD)
    fetch("f.bin", [server.url + "/"], tmp_path, md5(GOOD), progress=False)
    assert server.requests == []
    (tmp_path / "f.bin").write_bytes(b"stale")
    fetch("f.bin", [server.url + "/"], tmp_path, md5(GOOD), progress=False)
    assert server.requests == ["/f.bin"] and (tmp_path / "f.bin").read_bytes() == GOOD


# ---- extract_tar ----


def tar_of(*members) -> bytes:
    """A .tar.gz of (TarInfo, content or None) pairs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, content in members:
            info.size = len(content or b"")
            tar.addfile(info, io.BytesIO(content) if content else None)
    return buffer.getvalue()


def member(name, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_extract_tar_unpacks_files_and_folders(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(tar_of((member("d", tarfile.DIRTYPE), None), (member("d/f.txt"), b"hi")))
    extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "f.txt").read_bytes() == b"hi"


@pytest.mark.parametrize(
    "bad, problem",
    [
        (member("/tmp/evil.txt"), "an absolute path"),
        (member("../evil.txt"), "a path with '..'"),
        (member("d/../../evil.txt"), "a path with '..'"),
        (member("d\\..\\..\\evil.txt"), "a path with '..'"),
        (member("C:/evil.txt"), "an absolute path"),
        (member("evil", tarfile.SYMTYPE, "/etc/passwd"), "a link"),
        (member("evil", tarfile.LNKTYPE, "d/f.txt"), "a link"),
        (member("evil", tarfile.CHRTYPE), "a device"),
        (member("evil", tarfile.FIFOTYPE), "a device or other special file"),
    ],
)
def test_extract_tar_refuses_members_that_could_escape(tmp_path, bad, problem):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(tar_of((member("d/f.txt"), b"fine"), (bad, b"x" if bad.isfile() else None)))
    with pytest.raises(DatasetError, match=f"refusing to unpack member .*: it is {problem}"):
        extract_tar(archive, tmp_path / "out" / "in")
    assert not (tmp_path / "out").exists()  # checked before anything is written
    assert not (tmp_path / "evil.txt").exists()


def test_extract_tar_reports_a_damaged_archive(tmp_path):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(tar_of((member("f"), GOOD))[:100])
    with pytest.raises(DatasetError, match="bad.tar.gz: cannot unpack"):
        extract_tar(archive, tmp_path / "out")


# ---- load(download=True) ----


def idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def mnist_mirror(server, monkeypatch):
    """A tiny MNIST test split on the local server, registered as the known files."""
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    files = {"t10k-images-idx3-ubyte": idx(images), "t10k-labels-idx1-ubyte": idx(np.array([4, 2]))}
    for stem, content in files.items():
        packed = gzip.compress(content)
        server.files[f"/mnist/{stem}.gz"] = ("ok", packed)
        monkeypatch.setitem(data.DOWNLOADS["mnist"], f"{stem}.gz", md5(packed))
        monkeypatch.setitem(data.CHECKSUMS, f"MNIST/raw/{stem}", md5(content))
    monkeypatch.setitem(data.MIRRORS, "mnist", [server.url + "/gone/", server.url + "/mnist/"])
    return torch.from_numpy(images.astype(np.uint8))


def test_load_downloads_missing_files_once(tmp_path, server, mnist_mirror):
    ds = data.load("mnist", "test", tmp_path, download=True)
    assert torch.equal(ds.images[:, 0], mnist_mirror) and ds.labels.tolist() == [4, 2]
    assert ds.verified
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    requests = len(server.requests)
    data.load("mnist", "test", tmp_path, download=True)
    assert len(server.requests) == requests


def test_load_without_download_never_contacts_a_mirror(tmp_path, server, mnist_mirror):
    with pytest.raises(DatasetError, match="download=True"):
        data.load("mnist", "test", tmp_path)
    assert server.requests == []


def test_load_download_failure_names_file_addresses_and_folder(tmp_path, server, monkeypatch):
    monkeypatch.setitem(data.MIRRORS, "fashion-mnist", [server.url + "/a/", server.url + "/b/"])
    with pytest.raises(DatasetError) as error:
        data.load("fashion-mnist", "train", tmp_path, download=True)
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message.splitlines()[0]
    assert f"{server.url}/a/train-images-idx3-ubyte.gz: HTTP 404" in message
    assert f"{server.url}/b/train-images-idx3-ubyte.gz: HTTP 404" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message


def cifar_archive(*extra_members):
    """A binary-layout archive with two-record batches; record n of batch b has label
    (b + n) % 10 and all pixels equal to b."""
    members = [(member("cifar-10-batches-bin", tarfile.DIRTYPE), None)]
    for b, batch in enumerate([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]):
        records = b"".join(bytes([(b + n) % 10]) + bytes([b]) * 3072 for n in range(2))
        members.append((member(f"cifar-10-batches-bin/{batch}"), records))
    members.append((member("cifar-10-batches-bin/batches.meta.txt"), b"airplane\n"))
    return tar_of(*members, *extra_members)


@pytest.fixture
def cifar_mirror(server, monkeypatch):
    def serve(archive):
        server.files["/kriz/cifar-10-binary.tar.gz"] = ("ok", archive)
        monkeypatch.setitem(data.DOWNLOADS["cifar10"], "cifar-10-binary.tar.gz", md5(archive))

    monkeypatch.setitem(data.MIRRORS, "cifar10", [server.url + "/kriz/"])
    monkeypatch.setattr(data, "CIFAR_RECORDS_PER_BATCH", 2)
    return serve


def test_load_downloads_and_unpacks_cifar_and_trusts_what_it_unpacked(tmp_path, cifar_mirror, recwarn):
    cifar_mirror(cifar_archive())
    train = data.load("cifar10", "train", tmp_path, download=True)
    assert train.verified and not recwarn.list
    assert train.labels.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert train.images[:, 0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert data.load("cifar10", "test", tmp_path).labels.tolist() == [5, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cache",
        "cifar-10-batches-bin",
        "cifar-10-binary.tar.gz",
    ]  # no unpacking leftovers
    edited = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    edited.write_bytes(edited.read_bytes())
    with pytest.warns(data.UnverifiedDataWarning, match="test_batch.bin"):
        assert not data.load("cifar10", "test", tmp_path).verified


def test_cifar_archive_that_escapes_is_refused(tmp_path, cifar_mirror):
    cifar_mirror(cifar_archive((member("../../evil.txt"), b"x")))
    with pytest.raises(DatasetError, match="refusing to unpack member '../../evil.txt'"):
        data.load("cifar10", "test", tmp_path, download=True)
    assert not (tmp_path / "cifar-10-batches-bin").exists()
