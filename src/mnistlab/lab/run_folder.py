"""Run folders: a run's identity (the command that started it), and whether it has finished.

Light on purpose (no torch): the command line uses it to pick the folder to resume before Hydra
creates a new one.
"""

import fcntl
import json
import logging
import os
import re
import socket
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from mnistlab.lab import provenance
from mnistlab.lab.files import write_whole

LOCK = ".lock"  # held by the process writing into a run or sweep folder
RESULTS = "results.json"  # written when a run has trained and tested; its presence means "finished"
POLICIES = ("auto", "must", "never")


def without_resume(overrides) -> list[str]:
    """The overrides, in their order, but `resume=` (how to run, not what)."""
    return [o for o in overrides if not o.lstrip("+~").startswith("resume=")]


def identity(overrides: list[str]) -> list[str]:
    """What makes two commands the same run: their overrides in any order, `resume=` and
    `hydra.*` aside (how to run; Hydra records only the others as the task's overrides)."""
    return sorted(o for o in without_resume(overrides) if not o.lstrip("+~").startswith("hydra."))


def find_run(runs_dir: Path, overrides: list[str]) -> Path | None:
    """The newest run folder under `runs_dir` started with the same overrides, if any."""
    wanted = identity(overrides)
    matches = []
    for recorded in Path(runs_dir).glob("*/.hydra/overrides.yaml"):
        try:
            same = identity(yaml.safe_load(recorded.read_text()) or []) == wanted
        except (OSError, yaml.YAMLError):
            continue  # a folder we cannot read is not the run we are looking for
        if same:
            matches.append(recorded.parent.parent)
    return max(matches, key=lambda p: p.name, default=None)


def finished(run_dir: Path, max_epochs, max_steps) -> dict | None:
    """The results of `run_dir` if it finished training to these limits, else None."""
    try:
        results = json.loads((Path(run_dir) / RESULTS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # written whole: damaged since
        logging.getLogger(__name__).warning(
            "%s cannot be read (%s): the run is taken as unfinished", Path(run_dir) / RESULTS,
            str(e).splitlines()[0])  # fmt: skip
        return None
    if not isinstance(results, dict):
        return None
    if (results.get("max_epochs"), results.get("max_steps")) != (max_epochs, max_steps):
        return None  # the limits were raised since: there is more to train
    return results


def write_results(run_dir: Path, results: dict) -> None:
    """Atomically, so that a run is never marked finished by half a file; then run.json's last
    start is marked completed."""
    write_whole(Path(run_dir) / RESULTS, (json.dumps(results, indent=2) + "\n").encode())
    provenance.end(run_dir, "completed")


@contextmanager
def hold(folder: Path, what: str = "run"):
    """Hold `folder`'s lock while writing into it: a second process (the same command started
    twice, a sweep re-run while it is still running) is refused in one line naming the holder.
    The lock is the kernel's (`flock`), so it ends with its process, kill -9 included, and the
    next command takes it over, removing what a killed holder left half-written."""
    from mnistlab.lab import UserError

    path = Path(folder) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise UserError(
                f"{folder}: this {what} folder is in use by {holder}; wait for it to end or stop"
                " it (a lock whose process died is taken over)"
            ) from None
        except OSError as e:  # a file system without locks (some NFS setups): go on unguarded
            logging.getLogger(__name__).warning("%s: cannot be locked (%s)", path, e)
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join(sys.argv[1:])[:200]
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}"
                      f" ({command})\n".encode(), 0)  # fmt: skip
        if what == "run":
            _remove_leftovers(Path(folder))
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)


def held(folder: Path) -> bool:
    """Whether a live process holds `folder`'s lock (`hold`). `folder` may come from a record
    someone else wrote: the lock is only opened to read, never blocking, and only a regular file
    counts."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _remove_leftovers(folder: Path) -> None:
    """Temporary files (`.<name>.<pid>.tmp`) of a process killed while writing: no one else
    writes here while the lock is held, so every one of them is a leftover."""
    for tmp in folder.rglob(".*.tmp"):
        if re.fullmatch(r"\..+\.\d+\.tmp", tmp.name):
            tmp.unlink(missing_ok=True)


def not_a_run(path: Path, key: str, file_hint: str) -> str:
    """Why `path`, given as `key=`, is not a run folder, and what was likely meant: for a file,
    `file_hint`; the run a folder is inside of; the newest finished run of a folder of runs."""
    if path.is_file():
        return f"{key}={path}: a file, not a run folder; {file_hint}"
    if run := next((p for p in path.parents if (p / ".hydra").is_dir()), None):
        return f"{key}={path}: a folder inside a run; name the run itself: {key}={run}"
    if runs := list(path.glob(f"*/{RESULTS}")) or list(path.glob(f"*/*/{RESULTS}")):
        newest = max(runs, key=lambda p: p.stat().st_mtime).parent
        return (f"{key}={path}: a folder of {len(runs)} finished run(s); name one, e.g. the"
                f" newest: {key}={newest}")  # fmt: skip
    return f"{key}={path}: not a run folder (no .hydra/config.yaml in it)"
