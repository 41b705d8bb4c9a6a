"""What a sweep did, job by job: each job records its own status, the sweep sums them up.

Every job writes `job.json` in its folder when it starts and when it ends (completed, failed with
its first error line, interrupted by a signal), so the summary is true even for a job that
crashed or a sweep that was killed; a job with no folder was not started. Light on purpose (no
torch): the sweepers run in Hydra's process.
"""

import base64
import csv
import io
import json
import math
import re
import sys
import time
from pathlib import Path

import yaml

from mnistlab.lab.files import read_object, write_whole
from mnistlab.lab.run_folder import RESULTS
from mnistlab.lab.stats import number as shown_number

JOB = "job.json"
REPORTED = ("val/acc_best", "test/acc", "test/loss")  # conf/train.yaml's report_metrics
# An Optuna trial's job: its trial and study (mnistlab.lab.pruning's TrialReport arguments), as JSON
# in URL-safe base64, an override's value and a variable's with nothing to quote or escape.
TRIAL_ENV = "MNISTLAB_OPTUNA_TRIAL"
# The sweep's own process, for the jobs it runs in worker processes (mnistlab.lab.preemption).
SWEEP_PID = "MNISTLAB_SWEEP_PID"


def encode_trial(arguments: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(arguments).encode()).decode()


def open_storage(spec: str):
    """An Optuna storage: a database URL (`sqlite:///...`, `postgresql://...`), else the path of a
    journal file, which any number of processes on any nodes sharing it may use at once."""
    import optuna

    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(spec))


def default_storage(sweep_dir: Path) -> str:
    """`<sweep>/optuna.journal`; `sqlite:///<sweep>/optuna.db` for a study begun there."""
    old = sweep_dir / "optuna.db"
    return f"sqlite:///{old}" if old.is_file() else str(sweep_dir / "optuna.journal")


def opened(storage: str):
    """The study's storage; a journal's folder is made. One that cannot be opened (a folder
    that cannot be made, a database that does not answer) is one line, exit 2."""
    from mnistlab.lab import UserError, refuse

    try:
        if "://" not in storage:
            Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return open_storage(storage)
    except Exception as e:  # OSError, SQLAlchemy's errors, a missing database driver
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        sys.exit(refuse("mnistlab-train", UserError(
            f"hydra.sweeper.storage={storage}: cannot be opened ({first})")))  # fmt: skip


def columns(metrics: list[str]) -> list[str]:
    return ["job", "status", "objective", *metrics, "wall_s", "overrides", "error", "folder"]


def job_label(sweep_dir: Path, overrides: list[str]) -> str:
    """A sweep job's name among its sweep's: its values of the keys the sweep varies
    (`lr=0.001,seed=1`, a key by its last part where that is unambiguous; as one folder name,
    characters but letters, digits and `.=,+-` made `-`); "" for none. The
    keys are read, as data, from the multirun.yaml Hydra writes in the sweep's folder before its
    first job: its command line's sweep overrides (`seed=1,2,3`) and its sweeper's search space
    (`hydra.sweeper.params`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    record = read_yaml(Path(sweep_dir) / "multirun.yaml")
    hydra = record.get("hydra") if isinstance(record, dict) else None
    hydra = hydra if isinstance(hydra, dict) else {}
    task = (hydra.get("overrides") or {}).get("task") or []
    params = (hydra.get("sweeper") or {}).get("params") or {}
    varied = {str(k) for k in params} if isinstance(params, dict) else set()
    parser = OverridesParser.create()
    for text in task if isinstance(task, list) else []:
        try:
            override = parser.parse_override(str(text))
        except HydraException:  # a line that is not an override names no key
            continue
        if override.is_sweep_override():
            varied.add(override.key_or_group)
    keys = [o.lstrip("+~").partition("=")[0] for o in overrides]
    last = [k.rpartition(".")[2] for k in keys if k in varied]
    label = ",".join(
        f"{k.rpartition('.')[2] if last.count(k.rpartition('.')[2]) == 1 else k}={o.partition('=')[2]}"
        for k, o in zip(keys, overrides, strict=True) if k in varied
    )  # fmt: skip
    return re.sub(r"[^\w.=,+-]", "-", label)[:120]  # one folder's name: no `/`, no spaces


def read_yaml(path: Path):
    """A YAML file as plain data (None when it is missing or unreadable): never built."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def begin(folder: Path, overrides: list[str]) -> None:
    """A job starts (or starts again, continued): a new record, nothing of an earlier attempt's
    (its error, its signal) kept but its time; its overrides without `resume=`, which is how it
    runs, not what, so a continued job stays in its group."""
    from mnistlab.lab.run_folder import without_resume

    job = {"overrides": without_resume(overrides), "status": "running"}
    earlier = read_job(folder).get("wall_s")  # what the job's `wall_s` adds this attempt to
    if isinstance(earlier, int | float) and not isinstance(earlier, bool) and earlier >= 0:
        job["wall_s_before"] = earlier
    write_whole(Path(folder) / JOB, json.dumps(job, indent=2) + "\n")


def record(folder: Path, **fields) -> None:
    """Merge `fields` into the job's job.json, atomically; `wall_s`: this attempt's, to which
    the earlier attempts' are added."""
    data = read_job(folder)
    if "wall_s" in fields:
        fields["wall_s"] += data.get("wall_s_before", 0.0)
    data |= fields
    write_whole(Path(folder) / JOB, (json.dumps(data, indent=2) + "\n").encode())


def read_job(folder: Path) -> dict:
    return read_object(Path(folder) / JOB)


def completed(folder: Path) -> bool:
    return read_job(folder).get("status") == "completed" and (Path(folder) / RESULTS).is_file()


def rows(
    jobs: list[tuple[int, list[str], Path]], objective: str, reported=REPORTED, maximize=True
) -> list[dict]:
    """One row per job (number, overrides, folder), best objective first, unfinished last;
    a column for each metric in `reported`."""
    table = []
    for number, overrides, folder in jobs:
        job = read_job(folder)
        overrides = job.get("overrides") or overrides  # as the job recorded them when it ran
        status = job.get("status") or ("not started" if not folder.exists() else "interrupted")
        if status == "running":  # its process died without a word: killed
            status = "interrupted"
        metrics = _metrics(folder)
        table.append({
            "job": number, "status": status, "objective": metrics.get(objective),
            **{m: metrics.get(m) for m in reported},
            "wall_s": job.get("wall_s"), "overrides": " ".join(overrides),
            "error": job.get("error", ""), "folder": str(folder),
        })  # fmt: skip
    done = [r for r in table if r["objective"] is not None]
    rest = [r for r in table if r["objective"] is None]
    return sorted(done, key=lambda r: -r["objective"] if maximize else r["objective"]) + rest


def _metrics(folder: Path) -> dict:
    metrics = read_object(Path(folder) / RESULTS).get("metrics")
    return metrics if isinstance(metrics, dict) else {}


def run_attributes(folder: Path, reported=REPORTED) -> dict:
    """What leads from a job back to its run, as plain values (an Optuna trial's user
    attributes, which optuna-dashboard shows): its folder, status, seed and final metrics (those
    its results.json reports, else `reported`)."""
    folder = Path(folder)
    status = read_job(folder).get("status") or "not started"
    found = {"run_folder": str(folder.resolve()), "status": status}
    try:
        seed = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text()).get("seed")
    except (OSError, yaml.YAMLError, AttributeError):
        seed = None
    if isinstance(seed, int):
        found["seed"] = seed
    results = read_object(folder / RESULTS)  # the metrics the run itself reports, if it says
    names = results.get("reported") if isinstance(results.get("reported"), list) else reported
    metrics = results.get("metrics") if isinstance(results.get("metrics"), dict) else {}
    for name in names:
        value = metrics.get(name) if isinstance(name, str) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found[name] = value
    return found


def write(sweep_dir: Path, table: list[dict], objective: str, reported=REPORTED) -> str:
    """summary.csv and summary.md in the sweep folder; returns the markdown."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns(list(reported)))
    writer.writeheader()
    writer.writerows(table)
    write_whole(Path(sweep_dir) / "summary.csv", text.getvalue())  # continuation reads it
    counts = {
        s: sum(r["status"] == s for r in table) for s in dict.fromkeys(r["status"] for r in table)
    }
    lines = [
        f"# Sweep {sweep_dir}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f"; objective: {objective}",
        "",
        "| job | status | objective | " + " | ".join(reported) + " | wall s | swept | error |",
        "|---|---|---|" + "---|" * len(reported) + "---|---|---|",
    ]
    common = set.intersection(*(set(r["overrides"].split()) for r in table)) if table else set()
    for r in table:  # the table shows what differs between jobs; summary.csv has it all
        swept = " ".join(o for o in r["overrides"].split() if o not in common)
        lines.append(
            f"| {r['job']} | {r['status']} | {_num(r['objective'])} | "
            + "".join(f"{_num(r[m])} | " for m in reported)
            + f"{_num(r['wall_s'], 1)} | {swept} | {r['error']} |"
        )
    markdown = "\n".join(lines) + "\n"
    write_whole(Path(sweep_dir) / "summary.md", markdown)
    return markdown


def _num(value, digits: int = 4) -> str:
    return "" if value is None else shown_number(value) if digits == 4 else f"{value:.{digits}f}"
