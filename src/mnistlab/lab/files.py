"""Files written whole or not at all, and their checksums. No torch: light to import."""

import hashlib
import itertools
import json
import logging
import os
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)
_warned: set[Path] = set()


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
    except OSError as e:  # named by the file meant, not the temporary one
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        with suppress(OSError):  # none there, or a read-only file system: nothing to remove
            tmp.unlink()


def write_whole(path: Path, data: bytes | str) -> None:
    """`path` holds `data` (text as UTF-8), or what it held before: never a part of it."""
    with atomic_write(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def new_folder(path: Path) -> Path:
    """`path`, made now, or `path_1`, `path_2`, ... when taken: `mkdir` fails on a folder that
    exists, so two commands started in the same second never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        candidate = path.with_name(f"{path.name}_{n}") if n else path
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise AssertionError  # unreachable: itertools.count() has no end


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read_object(path: Path) -> dict:
    """A JSON object from `path` (a record: job.json, results.json); {} when there is none. One
    that is there but is no JSON object (cut short, damaged) is named in a warning, once, and
    read as none."""
    path = Path(path)
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        found = None
    if isinstance(found, dict):
        return found
    if path not in _warned:
        _warned.add(path)
        log.warning("%s: not a readable JSON object: read as if absent", path)
    return {}
