"""Where a run came from, whatever its logger: `run.json` in the run folder, one entry per start
of the run (a resumed run adds one): the code's commit, branch and whether it had uncommitted
changes, the command line as typed, Python and the key packages' versions, the host and device,
and the start and end time. With uncommitted changes, their diff against the commit is saved
beside it (`changes-<n>.patch`, the entry's number), so that the exact code can be rebuilt. The
last entry also goes into every checkpoint (`checkpoint["provenance"]`) and `make compare` shows
each run's commit. Light: no torch (the device is given by the caller).
"""

import datetime
import json
import platform
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mnistlab.lab.config import ROOT
from mnistlab.lab.files import read_object, write_whole

RECORD = "run.json"
PACKAGES = ("mnistlab", "torch", "torchvision", "lightning", "torchmetrics", "hydra-core",
            "omegaconf", "numpy")  # fmt: skip
MAX_PATCH = 10 << 20  # a larger diff (data committed by mistake?) is named, not copied
MAX_NEW_FILE = 1 << 20  # a new file git does not ignore, larger than this: named, not copied


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _git(*args: str, ok=(0,)) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode(errors="replace") if done.returncode in ok else None


def code() -> tuple[dict, str | None]:
    """The checkout's commit, branch and dirty flag, and the diff of its uncommitted changes
    (None when clean, or not a git checkout): changes to tracked files, and new files git does
    not ignore (a new network module not yet added), so that `git apply` rebuilds the code."""
    commit = (_git("rev-parse", "HEAD") or "").strip()
    if not commit:
        return {"commit": None, "note": f"{ROOT} is not a git checkout (or git is missing)"}, None
    branch = (_git("rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
    diff = _git("diff", "HEAD", "--binary") or ""
    new = [
        f for f in (_git("ls-files", "--others", "--exclude-standard", "-z") or "").split("\0") if f
    ]
    left_out = []
    for name in new:  # `git diff --no-index` exits 1 when the files differ, as they do here
        try:
            big = (ROOT / name).stat().st_size > MAX_NEW_FILE
        except OSError:
            continue
        if big or len(diff) > MAX_PATCH:
            left_out.append(name)
            continue
        diff += _git("diff", "--no-index", "--binary", "--", "/dev/null", name, ok=(0, 1)) or ""
    found = {"commit": commit, "branch": branch, "dirty": bool(diff or new)}
    if new:
        found["new_files"] = len(new)
    if left_out:  # data or outputs not in .gitignore, most likely: named, not copied
        found["not_in_patch"] = left_out[:20]
    return found, diff or None


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def start(folder: Path, device: str, argv: list[str] | None = None) -> dict:
    """Add this start's entry to the run folder's record (and its patch); return the entry."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)  # with no logger, nothing has made it yet
    runs = read_object(folder / RECORD).get("starts")
    runs = runs if isinstance(runs, list) else []
    git, diff = code()
    if diff is not None:
        name = f"changes-{len(runs)}.patch"
        if len(diff) <= MAX_PATCH:
            write_whole(folder / name, diff.encode())
            git["patch"] = name
        else:
            git["patch"] = f"not saved: the diff is {len(diff) >> 20} MiB (over {MAX_PATCH >> 20})"
    entry = {
        "started": now(),
        "ended": None,
        "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "cwd": str(Path.cwd()),
        "code": git,
        "versions": versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": device,
    }
    _write(folder, [*runs, entry])
    return entry


def end(folder: Path, status: str) -> None:
    """Mark the last start's end (its time and how it ended: completed, failed, interrupted)."""
    runs = read_object(Path(folder) / RECORD).get("starts")
    if isinstance(runs, list) and runs and isinstance(runs[-1], dict):
        runs[-1] |= {"ended": now(), "status": status}
        _write(Path(folder), runs)


def last(folder: Path) -> dict:
    """The last start's entry of a run folder ({} when it has none)."""
    runs = read_object(Path(folder) / RECORD).get("starts")
    return runs[-1] if isinstance(runs, list) and runs and isinstance(runs[-1], dict) else {}


def commit_of(folder: Path) -> str:
    """A short line for a run's code: `3f2a9c1`, `3f2a9c1+changes`, or `?` when unrecorded."""
    git = last(folder).get("code")
    if not isinstance(git, dict) or not isinstance(git.get("commit"), str):
        return "?"
    return git["commit"][:7] + ("+changes" if git.get("dirty") else "")


def _write(folder: Path, runs: list[dict]) -> None:
    write_whole(folder / RECORD, json.dumps({"starts": runs}, indent=2) + "\n")
