"""What both sweepers share: launching jobs by number, and the summary at the end."""

import logging
import os
import signal
import sys
import threading
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from hydra.core.utils import JobStatus
from omegaconf import DictConfig

from mnistlab.lab import UserError, refuse, sweeps
from mnistlab.lab.files import write_whole
from mnistlab.lab.run_folder import hold

log = logging.getLogger(__name__)


def job_dir(config: DictConfig, number: int) -> Path:
    return Path(config.hydra.sweep.dir) / str(number)


@contextmanager
def holding(sweep_dir: Path):
    """The sweep folder's lock for the whole sweep: the same sweep started again while it runs
    is refused in one line (exit 1) naming the process that holds it."""
    with ExitStack() as stack:
        try:
            stack.enter_context(hold(sweep_dir, "sweep"))
        except UserError as e:
            sys.exit(refuse("mnistlab-train", e, code=1))
        yield


def launch(launcher, jobs: list[tuple[int, list[str]]], batch_size: int | None = None) -> dict:
    """Launch jobs given by (number, overrides) and return their results by number. Numbers
    (and so folders) are kept when jobs in between were skipped: one launch per run of
    consecutive numbers, at most `batch_size` jobs each. A job stopped by a signal stops the
    sweep: the jobs after it are not started."""
    results: dict = {}
    for chunk in _chunks(jobs, batch_size):
        try:
            with _passing_stops_to_jobs(launcher):
                returns = launcher.launch([o for _, o in chunk], initial_job_idx=chunk[0][0])
        except Exception as e:  # submitit's FailedJobError: sbatch refused the job array
            if type(e).__name__ != "FailedJobError":
                raise
            sys.exit(refuse("mnistlab-train", UserError(sbatch_refusal(str(e))), code=1))
        results |= {n: r for (n, _), r in zip(chunk, returns, strict=True)}
        if any(stopped_by_signal(r) for r in returns):
            break
    return results


@contextmanager
def _passing_stops_to_jobs(launcher):
    """Jobs in worker processes of this machine (joblib's, submitit_local's): a SIGTERM or SIGINT
    to the sweep goes on to them as SIGTERM, and the sweep waits while each stops at a checkpoint
    (its own `Preemption`) and records it, then writes its summary; without this the sweep would
    exit at once and leave its workers training as orphans. A worker that had the signal already
    (Ctrl-C reaches the whole process group) is stopping: it ignores the second one; one that
    has not run a job yet has nothing to stop and is left alone. Should the sweep die without a
    word (`kill -9`), each job notices and stops the same way (`preemption.sweep_job`)."""
    name = type(launcher).__name__
    if ("Joblib" not in name and "Local" not in name) or (
        threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def stop_jobs(signum, _):
        log.warning("%s received: the jobs stop at a checkpoint, then the sweep writes its summary",
                    signal.Signals(signum).name)  # fmt: skip
        for pid in _children(os.getpid()):
            if _catches(pid, signal.SIGTERM):  # else a worker yet to run a job: it would die
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop_jobs) for s in (signal.SIGTERM, signal.SIGINT)}
    os.environ[sweeps.SWEEP_PID] = str(os.getpid())  # before the workers start: they inherit it
    try:
        yield
    finally:
        os.environ.pop(sweeps.SWEEP_PID, None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (Linux's /proc: SigCgt)."""
    with suppress(OSError, StopIteration, ValueError):
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        mask = next(line for line in status if line.startswith("SigCgt:")).split()[1]
        return bool(int(mask, 16) >> (sig - 1) & 1)
    return False


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc; none elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


# What SLURM's refusals mean, as the launcher setting to change (conf/hydra/launcher/slurm.yaml).
SBATCH_HINTS = {
    "generic resource": "hydra.launcher.gpus_per_node (null: no GPU) to what the nodes have",
    "node configuration is not available": "hydra.launcher.cpus_per_task or mem_gb, or"
    " trainer.num_nodes and trainer.devices (nodes and tasks follow them), to what the nodes"
    " have (sinfo -N -l)",
    "memory specification": "hydra.launcher.mem_gb to what a node has (sinfo -N -l)",
    "cpu count": "hydra.launcher.cpus_per_task to what a node has (sinfo -N -l)",
    "more processors": "hydra.launcher.cpus_per_task, or trainer.num_nodes and trainer.devices"
    " (the job's nodes and tasks per node follow them), to what the partition has (sinfo -N -l)",
    "partition": "hydra.launcher.partition to one that sinfo lists (null: the default one)",
    "account": "hydra.launcher.account to one you may use (sacctmgr show assoc user=$USER)",
    "qos": "hydra.launcher.qos to one your account may use",
    "time limit": "hydra.launcher.timeout_min to within the partition's limit (sinfo)",
}


def sbatch_refusal(text: str) -> str:
    """One line from sbatch's error output: its message and the setting that causes it."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    hint = next((h for key, h in SBATCH_HINTS.items() if key in message.lower()),
                "the settings in conf/hydra/launcher/slurm.yaml (hydra.launcher.*)")  # fmt: skip
    return f"SLURM refused the jobs ({message}): set {hint}"


def _chunks(jobs: list[tuple[int, list[str]]], size: int | None):
    chunk: list = []
    for job in jobs:
        if chunk and (job[0] != chunk[-1][0] + 1 or len(chunk) == (size or len(jobs))):
            yield chunk
            chunk = []
        chunk.append(job)
    if chunk:
        yield chunk


def finish(config: DictConfig, jobs: list[tuple[int, list[str]]], objective: str) -> None:
    """Print and write the summary; exit non-zero if any job did not complete."""
    sweep_dir = Path(config.hydra.sweep.dir)
    reported = list(config.get("report_metrics") or sweeps.REPORTED)
    maximize = str(config.hydra.sweeper.get("direction", config.get("mode", "max"))) not in (
        "min",
        "minimize",
    )
    table = sweeps.rows(
        [(n, o, job_dir(config, n)) for n, o in jobs], objective, reported, maximize
    )
    markdown = sweeps.write(sweep_dir, table, objective, reported)
    markdown += _over_seeds(sweep_dir, [job_dir(config, n) for n, _ in jobs])
    print(markdown, end="")
    bad = [r for r in table if r["status"] not in ("completed", "pruned")]  # pruned: on purpose
    # Printed, not logged: the jobs' logging setup (Hydra's, per job) has replaced the sweep's.
    if not bad:
        print(f"Summary: {sweep_dir / 'summary.md'}", file=sys.stderr)
        return
    for r in bad:
        where = f": {r['error']}" if r["error"] else ""
        log_file = Path(r["folder"]) / "train.log"
        print(f"Job {r['job']} {r['status']}{where} (log: {log_file})", file=sys.stderr)
    signum = max((sweeps.read_job(Path(r["folder"])).get("signal") or 0 for r in bad), default=0)
    print(f"{len(bad)} of {len(table)} jobs did not complete; the same command continues the sweep"
          f" (completed jobs are skipped). Summary: {sweep_dir / 'summary.md'}", file=sys.stderr)  # fmt: skip
    sys.exit(128 + signum if signum else 1)


def _over_seeds(sweep_dir: Path, folders: list[Path]) -> str:
    """When the sweep varies the seed: the jobs grouped by configuration (mnistlab.lab.report),
    appended to summary.md; else nothing."""
    from mnistlab.lab import report, tables

    runs = [report.read_run(f) for f in folders if f.is_dir()]
    seeds = {o for r in runs for o in r["overrides"] if o.lstrip("+").startswith("seed=")}
    if len(seeds) < 2:
        return ""
    metrics = report.default_metrics(runs)
    text = "\n" + tables.markdown(*report.summarize(report.group(runs, ["seed"], []), metrics))
    write_whole(sweep_dir / "summary.md", (sweep_dir / "summary.md").read_text() + text)
    return text


def stopped_by_signal(result) -> int | None:
    """The signal number if this job was stopped by one, as its job.json records it."""
    if result is None or result.status != JobStatus.FAILED or result.hydra_cfg is None:
        return None
    return sweeps.read_job(Path(result.hydra_cfg.hydra.runtime.output_dir)).get("signal")
