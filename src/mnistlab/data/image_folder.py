"""Your own images, no code: `root/train/<class>/*`, `root/test/<class>/*` (and `root/val/<class>/*`
if you have one; else validation is held out of train). PNG, JPEG, BMP or WebP of any size and
mode, brought to `data.channels` x `data.image_size` once, in parallel, into a cache file beside
the data. The cache is named by the folder's files (path, size, modification and change times,
inode) and the decoding settings, so a changed folder is decoded anew: a file replaced by another
of the same size whose modification time was set back (`touch -r`) still has a new change time
(which no user can set) or inode. Its images, labels and class list are checksummed together; it
is written atomically and memory-mapped, so a dataset larger than RAM is read through the page
cache.
"""

import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from mnistlab.data.decode import decode_chunk, is_image
from mnistlab.data.folders import class_folders, dataset_classes
from mnistlab.data.images import ImageDataModule, Split
from mnistlab.lab import UserError
from mnistlab.lab.config import project_path
from mnistlab.lab.files import atomic_write, file_sha256

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: change time and inode in the key, labels and classes in the checksum
CHUNK = 512  # images per task of the decoding pool
# Forked workers start at once (as DataLoader's do on Linux); they only run PIL and numpy.
_START = "fork" if sys.platform == "linux" else "spawn"


class ImageFolderDataModule(ImageDataModule):
    def __init__(
        self,
        root: str,
        classes: Sequence[str] | None = None,
        image_size: int | Sequence[int] = 32,
        channels: int = 3,
        on_bad_image: str = "fail",
        cache_dir: str | None = None,
        decode_workers: int | None = None,
        **kwargs,
    ):
        """`classes`: the class folders, in label order (None: those of `root/train`, sorted,
        as the config reads them). `on_bad_image`: `fail` lists the files that cannot be
        decoded and stops; `skip` leaves them out with a warning. `cache_dir`: where the decoded
        cache goes (default `root/.cache`). `decode_workers`: processes decoding (default: the
        cores). Other arguments: `ImageDataModule`'s."""
        classes = classes or dataset_classes(project_path(root))
        super().__init__(channels, image_size, classes, **kwargs)
        if channels not in (1, 3):
            raise UserError(f"data.channels={channels}: image folders are read as 1 or 3 channels")
        if on_bad_image not in ("fail", "skip"):
            raise UserError(f"data.on_bad_image={on_bad_image}: choose fail or skip")
        self.root = project_path(root)
        self.on_bad_image, self.decode_workers = on_bad_image, decode_workers
        self.cache_dir = project_path(cache_dir) if cache_dir else self.root / ".cache"
        self._split_names: list[str] = []
        self._scanned: dict[str, tuple[list[str], list[int], str]] = {}
        self._loaded: dict[str, Split] = {}

    def prepare_data(self) -> None:
        """Decode each split into its cache (once per process group, by rank 0), after every
        split's folders were checked: a bad test folder stops the run before any decoding."""
        splits = self._splits()
        for split in splits:
            self._scan(split)
        for split in splits:
            self._cached(split)

    def load(self, split: str) -> Split | None:
        if split not in self._splits():
            return None
        return self._cached(split)

    def _splits(self) -> list[str]:
        if not self._split_names:  # the config's check, again: the folder may have changed since
            dataset_classes(self.root)
            self._split_names = ["train", "test"] + (
                ["val"] if (self.root / "val").is_dir() else []
            )
        return self._split_names

    # ------------------------------------------------------------------ the cache

    def _cached(self, split: str) -> Split:
        """The split from its cache, built first if needed (once per process and split)."""
        if split not in self._loaded:
            self._loaded[split] = self._from_cache(split)
        return self._loaded[split]

    def _from_cache(self, split: str) -> Split:
        files, labels, key = self._scan(split)
        path = self.cache_dir / f"{self._prefix(split)}{key[:16]}.npy"
        cached = _read_cache(path, self.classes)
        if cached is None:
            cached = self._build(split, files, labels, path)
        images, meta = cached
        if meta["skipped"] and self.on_bad_image == "fail":
            raise UserError(_bad_message(meta["skipped"]))
        return Split(images, np.asarray(meta["labels"], dtype=np.int64), self.classes)

    def _prefix(self, split: str) -> str:
        """Caches of one split at one decoded shape share this prefix; the newest replaces the rest."""
        return f"{split}-{self.channels}x{self.height}x{self.width}-"

    def _scan(self, split: str) -> tuple[list[str], list[int], str]:
        """The image files of `split`, their labels, and the cache's name: a hash of every
        file's path, size, modification and change times and inode, the decoded shape and the
        decoding version (scanned once per split, with one stat per file)."""
        if split in self._scanned:
            return self._scanned[split]
        folder = self.root / split
        found = class_folders(self.root, split)
        if found != self.classes:
            raise UserError(
                f"{folder} has classes {found[:12]}, data.classes (from {self.root / 'train'}) is"
                f" {self.classes[:12]}: every split needs the same class folders"
            )
        shape = (self.channels, self.height, self.width)
        digest = hashlib.sha256(f"v{CACHE_VERSION} {shape}".encode())
        files, labels = [], []
        for label, name in enumerate(self.classes):
            with os.scandir(folder / name) as entries:
                members = sorted((e.name, e.path) for e in entries if is_image(e.name))
            if not members:
                raise UserError(
                    f"{folder / name}: no images (PNG, JPEG, BMP, WebP); add some or remove the"
                    " class folder from every split"
                )
            for file, path in members:
                st = os.stat(path)
                digest.update(f"{name}/{file}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
                              f"\0{st.st_ino}\n".encode())  # fmt: skip
                files.append(path)
            labels += [label] * len(members)
        self._scanned[split] = files, labels, digest.hexdigest()
        return self._scanned[split]

    def _build(self, split: str, files: list[str], labels: list[int], path: Path):
        log.info("Decoding %d images of %s into %s", len(files), self.root / split, path)
        images, errors = _decode_all(files, (self.channels, self.height, self.width),
                                     self.decode_workers)  # fmt: skip
        keep = np.array([i not in errors for i in range(len(files))], dtype=bool)
        skipped = [f"{files[i]} ({errors[i]})" for i in sorted(errors)]
        if skipped and self.on_bad_image == "fail":
            raise UserError(_bad_message(skipped))
        if skipped:
            log.warning("Skipping %d undecodable file(s): %s", len(skipped), "; ".join(skipped[:5]))
            images = images[keep]
        meta = {"labels": np.asarray(labels)[keep].tolist(), "skipped": skipped,
                "classes": self.classes, "shape": list(images.shape)}  # fmt: skip
        try:
            _write_cache(path, images, meta)
        except OSError as e:  # a read-only data folder: train from memory, decode again next time
            log.warning("Cannot write the cache %s (%s); set data.cache_dir to keep one", path, e)
            return images, meta
        for stale in self.cache_dir.glob(f"{self._prefix(split)}*"):  # the folder as it was
            if stale.stem != path.stem:
                stale.unlink(missing_ok=True)
        return _read_cache(path, self.classes)


def _read_cache(path: Path, classes: list[str]):
    """(memory-mapped images, metadata), or None when absent or damaged (then rebuilt)."""
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if _checksum(file_sha256(path), meta) != meta["sha256"]:
            raise ValueError(f"the images, labels or classes differ from {meta_path.name}'s sha256")
        images = np.load(path, mmap_mode="c")  # copy-on-write: shared pages, writable for torch
        if list(images.shape) != meta["shape"] or images.dtype != np.uint8:
            raise ValueError(f"shape {images.shape}, expected {meta['shape']}")
        if meta["classes"] != classes or len(meta["labels"]) != len(images):
            raise ValueError("its classes or its number of labels differ from the folder's")
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("Damaged cache %s (%s): decoding again", path, e)
        return None
    return images, meta


def _write_cache(path: Path, images: np.ndarray, meta: dict) -> None:
    """The images file, then its metadata (with the images' sha256): each written to a temporary
    file, synced and renamed, so a crash leaves the old cache or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        np.save(f, images)
    meta = {**meta, "sha256": _checksum(file_sha256(path), meta)}
    with atomic_write(path.with_suffix(".json")) as f:
        f.write(json.dumps(meta).encode())


def _checksum(images_sha256: str, meta: dict) -> str:
    """One sha256 over the images file's and the labels, class list, skipped files and shape."""
    record = {k: meta[k] for k in ("labels", "classes", "skipped", "shape")}
    return hashlib.sha256(
        f"{images_sha256} {json.dumps(record, sort_keys=True)}".encode()
    ).hexdigest()


# ---------------------------------------------------------------------------- decoding


def _decode_all(files: list[str], shape: tuple, workers: int | None):
    """All files as uint8 (N, C, H, W), in parallel; {index: error} for those that failed."""
    images = np.zeros((len(files), *shape), dtype=np.uint8)
    errors: dict[int, str] = {}
    chunks = [(start, files[start : start + CHUNK]) for start in range(0, len(files), CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    with _progress(len(files)) as advance:
        if workers <= 1:
            results = (decode_chunk(start, part, shape) for start, part in chunks)
            _collect(results, images, errors, advance)
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context(_START)) as pool:
                results = pool.map(decode_chunk, *zip(*chunks, strict=True),
                                   [shape] * len(chunks))  # fmt: skip
                _collect(results, images, errors, advance)
    return images, errors


def _collect(results, images: np.ndarray, errors: dict, advance) -> None:
    for start, part, failed in results:
        images[start : start + len(part)] = part
        errors.update(failed)
        advance(len(part))


class _progress:
    """A progress bar on a terminal (rich), a line every quarter elsewhere; yields `advance`."""

    def __init__(self, total: int):
        self.total, self.done, self.bar = total, 0, None

    def __enter__(self):
        if sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task("decoding", total=self.total)
        return self.advance

    def advance(self, n: int) -> None:
        before, self.done = self.done, self.done + n
        if self.bar is not None:
            self.bar.update(self.task, advance=n)
        elif before * 4 // max(1, self.total) != self.done * 4 // max(1, self.total):
            log.info("Read %d/%d image files", self.done, self.total)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def _bad_message(skipped: list[str]) -> str:
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return (
        f"{len(skipped)} file(s) cannot be decoded: {'; '.join(skipped[:5])}{more}. Fix or"
        " remove them, or set data.on_bad_image=skip to train without them"
    )
