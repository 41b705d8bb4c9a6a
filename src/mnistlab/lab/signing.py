"""This checkout's own runs: an HMAC of what a run folder, checkpoint or export will build, under
a key kept in the checkout (`.mnistlab/run-key`, made on first use, never committed). What
carries a valid signature was made here and is trusted as it is (`mnistlab.lab.trust`)."""

import hashlib
import hmac
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("mnistlab.lab.trust")

KEY_FILE = Path(".mnistlab") / "run-key"  # in the project root (mnistlab.lab.config.ROOT)
SIGNED = ("config.yaml", "overrides.yaml")  # what in a run's .hydra/ decides what it builds,
# with the config folders hydra.yaml names (`config_folders`)


def signature(data) -> str | None:
    """The HMAC-SHA256 of `data` (bytes, or plain data as canonical JSON) under this checkout's
    key, made on first use; None when no key can be made."""
    key = _key(create=True)
    if key is None:
        return None
    if not isinstance(data, bytes):
        data = json.dumps(data, sort_keys=True, default=repr).encode()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def signed(data, given) -> bool:
    """Whether `given` is this checkout's signature of `data`."""
    key = _key(create=False)
    if key is None or not isinstance(given, str):
        return False
    if not isinstance(data, bytes):
        data = json.dumps(data, sort_keys=True, default=repr).encode()
    return hmac.compare_digest(hmac.new(key, data, hashlib.sha256).hexdigest(), given)


def sign_run(run_dir: Path) -> None:
    """Mark `run_dir` as made here: `.hydra/origin` holds the signature of its SIGNED files."""
    hydra = Path(run_dir) / ".hydra"
    if all((hydra / f).is_file() for f in SIGNED) and (signed_as := signature(_run_bytes(hydra))):
        from mnistlab.lab.files import write_whole

        write_whole(hydra / "origin", f"{signed_as}\n".encode())


def made_here(run_dir: Path | None) -> bool:
    """Whether `run_dir` was made by this checkout and its SIGNED files are as it wrote them."""
    hydra = Path(run_dir or "") / ".hydra"
    try:
        given = (hydra / "origin").read_text().strip()
        return run_dir is not None and signed(_run_bytes(hydra), given)
    except OSError:
        return False


def config_folders(hydra: Path) -> list[str]:
    """The `hydra.searchpath=` overrides a run was started with (config folders of one's own,
    which Hydra records in hydra.yaml, apart from the task's): signed with the SIGNED files."""
    import yaml

    try:
        recorded = yaml.safe_load((hydra / "hydra.yaml").read_text())["hydra"]["overrides"]["hydra"]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return []
    if not isinstance(recorded, list):
        return []
    return [o for o in recorded if isinstance(o, str) and o.startswith("hydra.searchpath=")]


def _run_bytes(hydra: Path) -> bytes:
    files = [(hydra / f).read_bytes() for f in SIGNED]
    return b"\0".join(files + [o.encode() for o in config_folders(hydra)])


def _key(create: bool) -> bytes | None:
    """This checkout's key; None when there is none (and, with `create`, none can be made)."""
    try:
        from mnistlab.lab.config import project_path
    except ImportError:  # load_exported with torch alone, away from a checkout: no key
        return None

    path = project_path(KEY_FILE)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
    tmp = path.with_name(f".run-key.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
        os.link(tmp, path)  # appears whole, and once: two first runs at once agree on one key
    except FileExistsError:
        pass
    except OSError as e:  # a read-only checkout: its runs are checked like anyone's
        log.warning("Cannot make %s (%s): this checkout's runs are not signed", path, e.strerror)
        return None
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()
