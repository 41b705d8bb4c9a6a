"""Files written whole or not at all, and their checksums. No torch: light to import."""

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: Path):
    """Yield a binary file that becomes `path` only when the block ends without an error: a
    temporary file in the same folder, synced, then renamed over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_whole(path: Path, data: bytes) -> None:
    """`path` holds `data`, or what it held before: never a part of it (`atomic_write`)."""
    with atomic_write(path) as f:
        f.write(data)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
